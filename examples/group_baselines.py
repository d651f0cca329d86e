"""Group baselines for LLM-style RL, checked exactly: RLOO, GRPO, and GRPO without the std.

A toy language model answers a prompt with 3 tokens from a vocabulary of 3. For every prompt, G
answers are sampled (in one episode, through one ``(G, V)`` categorical per token) and each is
scored by a reward. Every answer i gets an advantage A_i computed from the rewards of its group,
and the loss is ``-mean_i A_i * log pi(answer_i | prompt)``. Three advantages are checked against
the objective they are meant to maximize, the expected reward of one answer:

* RLOO, leave-one-out: ``A_i = r_i - mean_{j != i} r_j``. The baseline does not depend on answer
  i, so the estimator is unbiased: the check passes.
* GRPO: ``A_i = (r_i - mean_j r_j) / (std_j r_j + eps)``. The mean includes r_i and the std
  depends on every answer: biased, and not by a mere scale factor.
* GRPO with mean-centering only (no std): ``A_i = r_i - mean_j r_j``. Since
  ``r_i - mean_j r_j = (G - 1) / G * (r_i - mean_{j != i} r_j)``, its expected gradient is exactly
  ``(G - 1) / G`` times the true gradient. The check shows the shortfall, and that the loss
  multiplied by ``G / (G - 1)`` passes.

The prompt itself is drawn from a small data set with ``torch.multinomial``, so the check also
averages over prompts exactly. With 2 prompts there are ``2 * 27**G`` action sequences: 1,458 for
G = 2 and 39,366 for G = 3, enumerated in batched mode. (A failing check replays every
sequence alone to attribute the bias, which takes a while for 39,366 sequences, so at G = 3 only
the passing checks run.)

Run it with ``python examples/group_baselines.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import torch

from reinforce_check import check_reinforce

VOCAB = 3
LENGTH = 3
NUM_PROMPTS = 2
HIDDEN = 4
GRPO_EPS = 1e-4
TARGET_TOKEN = torch.tensor([2, 0])
"""The token each prompt asks for."""


class TinyLM(torch.nn.Module):
    """An autoregressive model conditioned on the prompt: ``tanh(prompt + previous token + position)``."""

    def __init__(self) -> None:
        super().__init__()
        self.prompt = torch.nn.Embedding(NUM_PROMPTS, HIDDEN)
        self.token = torch.nn.Embedding(VOCAB + 1, HIDDEN)  # index VOCAB is the start token
        self.position = torch.nn.Parameter(torch.randn(LENGTH, HIDDEN))
        self.head = torch.nn.Linear(HIDDEN, VOCAB)

    def generate(self, prompts: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``group`` answers for each prompt.

        Arguments:
            prompts: ``(batch,)`` prompt indices.

        Returns:
            ``(answers, log_probs)`` of shapes ``(batch, group, LENGTH)`` and ``(batch, group)``.
        """
        batch = prompts.shape[0]
        previous = torch.full((batch, group), VOCAB)
        context = self.prompt(prompts)[:, None, :]  # (batch, 1, HIDDEN)
        tokens, log_prob = [], torch.zeros(batch, group, dtype=torch.float64)
        for t in range(LENGTH):
            hidden = torch.tanh(context + self.token(previous) + self.position[t])
            dist = torch.distributions.Categorical(logits=self.head(hidden))  # (batch, group, VOCAB)
            token = dist.sample()  # during a check every token of every answer is tried in turn
            log_prob = log_prob + dist.log_prob(token)
            tokens.append(token)
            previous = token
        return torch.stack(tokens, dim=-1), log_prob


def reward(prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """One point per token equal to the prompt's target token, half a point for a palindrome."""
    hits = (answers == TARGET_TOKEN[prompts][:, None, None]).sum(dim=-1).to(torch.float64)
    palindrome = (answers[..., 0] == answers[..., -1]).to(torch.float64)
    return hits + 0.5 * palindrome


def advantages(rewards: torch.Tensor, method: str) -> torch.Tensor:
    """Per-answer advantages from the rewards of the group (last dimension)."""
    group = rewards.shape[-1]
    mean = rewards.mean(dim=-1, keepdim=True)
    if method == "rloo":
        others = (rewards.sum(dim=-1, keepdim=True) - rewards) / (group - 1)
        return rewards - others
    if method == "grpo":  # torch's std, with Bessel's correction, as GRPO implementations use it
        return (rewards - mean) / (rewards.std(dim=-1, keepdim=True) + GRPO_EPS)
    if method == "grpo-mean":
        return rewards - mean
    if method == "grpo-mean-rescaled":
        return (rewards - mean) * group / (group - 1)
    raise ValueError(method)


def make_episode(model: TinyLM, group: int, method: str):
    """A batched ``episode(batch_size)``: each row draws a prompt and a group of answers to it."""
    prompt_weights = torch.ones(NUM_PROMPTS, dtype=torch.float64)

    def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = torch.multinomial(prompt_weights.expand(batch_size, -1), 1).squeeze(1)
        answers, log_probs = model.generate(prompts, group)
        rewards = reward(prompts, answers)  # (batch, group)
        loss = -(advantages(rewards, method).detach() * log_probs).mean(dim=-1)
        # The objective: the mean reward of the group, whose expectation is the expected reward.
        return rewards.mean(dim=-1), loss

    return episode


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def check(model: TinyLM, group: int, method: str, show: bool = False) -> dict[str, float]:
    """Check one advantage; return the verdict and how the expected gradient relates to the true one."""
    report = check_reinforce(
        make_episode(model, group, method),
        dict(model.named_parameters()),
        batched=True,
        max_sequences=40_000,
        raise_exception=False,
    )
    if show:
        print(report)
        print()
    target = flat([p.target for p in report.parameters])  # -grad J
    estimate = flat([p.estimate for p in report.parameters])  # E[grad loss]
    scale = float(estimate @ target / (target @ target))  # best c in E[grad loss] ~ c * (-grad J)
    return {
        "ok": report.ok,
        "num_sequences": report.num_sequences,
        "relative_bias": float((estimate - target).norm() / target.norm()),
        "scale": scale,
        "off_direction": float((estimate - scale * target).norm() / (scale * target).norm()),
        "seconds": report.seconds,
    }


def print_table(rows: dict[str, dict[str, float]]) -> None:
    print(f"{'advantage':<20}  {'passes':<6}  {'||bias||/||grad J||':>19}  {'best scale c':>12}  "
          f"{'||E - c grad||/||c grad||':>25}")
    for method, row in rows.items():
        print(f"{method:<20}  {str(row['ok']):<6}  {row['relative_bias']:>19.4g}  {row['scale']:>12.6f}  "
              f"{row['off_direction']:>25.3g}")


def main() -> dict[int, dict[str, dict[str, float]]]:
    torch.manual_seed(0)
    model = TinyLM().double()
    results: dict[int, dict[str, dict[str, float]]] = {}

    group = 2
    print(f"== G = {group}: {NUM_PROMPTS} prompts x {VOCAB ** LENGTH}**{group} groups of answers, batched ==")
    print("The report for GRPO:")
    rows = results[group] = {
        m: check(model, group, m, show=m == "grpo") for m in ("rloo", "grpo", "grpo-mean", "grpo-mean-rescaled")
    }
    print_table(rows)
    print(
        f"GRPO, mean-centering only: E[grad loss] = {rows['grpo-mean']['scale']:.12f} x (-grad J), "
        f"(G-1)/G = {(group - 1) / group:.12f}."
    )
    print()

    # With G = 3 there are 39,366 sequences. A passing check takes a fraction of a second, so the
    # (G-1)/G claim is checked as a pass: the mean-centered loss times G/(G-1) is unbiased.
    group = 3
    print(f"== G = {group}: {NUM_PROMPTS} prompts x {VOCAB ** LENGTH}**{group} groups of answers, batched ==")
    rows = results[group] = {m: check(model, group, m) for m in ("rloo", "grpo-mean-rescaled")}
    print(f"{rows['rloo']['num_sequences']:,} action sequences, {rows['rloo']['seconds']:.2f} s per check")
    print_table(rows)
    print(
        f"GRPO, mean-centering only, times G/(G-1) = {group / (group - 1):.6g}: "
        f"{'passes' if rows['grpo-mean-rescaled']['ok'] else 'FAILS'}, so its expected gradient is exactly "
        f"(G-1)/G = {(group - 1) / group:.6g} times the true gradient."
    )
    return results


if __name__ == "__main__":
    main()
