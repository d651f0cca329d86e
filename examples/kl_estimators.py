"""KL-penalty estimators k1, k2, k3, in the reward or in the loss: which give the KL's gradient?

RLHF trainers keep the policy pi close to a frozen reference model pi_ref by penalizing an
estimate of KL(pi || pi_ref) computed from the sampled tokens. With the per-token log-ratio
``log_ratio_t = log pi(y_t | y_<t) - log pi_ref(y_t | y_<t)`` and ``r_t = pi_ref / pi`` at that
token, three estimators are common, each summed over the tokens of the answer:

* ``k1 = log_ratio``                  (= -log r)
* ``k2 = log_ratio**2 / 2``           (= (log r)**2 / 2)
* ``k3 = r - 1 - log r``              (non-negative, low variance)

and two placements:

* in the reward: the penalty is a (detached) reward, ``reward = -sum_t k_t``, trained by
  REINFORCE, ``loss = -log pi(y) * reward``;
* in the loss: ``loss = sum_t k_t``, differentiated directly through pi's log-probabilities
  (pathwise, with the sampled tokens fixed), as many trainers do.

A third placement, both at once, is the full gradient of ``E[sum_t k_t]``: the score term plus
the pathwise term. Each of the 9 combinations is checked against the objective it claims to
minimize, the sequence-level ``KL(pi || pi_ref)``. The check's objective for one answer is
``-(log pi(y) - log pi_ref(y))``: its expectation is exactly ``-KL(pi || pi_ref)`` and it depends
on the parameters directly, which the check differentiates too. A second table checks k2 and k3
computed from the whole answer's log-ratio, in the loss, against what they do optimize.

Run it with ``python examples/kl_estimators.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import itertools

import torch

from reinforce_check import check_reinforce

VOCAB = 3
LENGTH = 3
HIDDEN = 4


class TinyLM(torch.nn.Module):
    """An autoregressive model over answers of ``LENGTH`` tokens: ``tanh(previous token + position)``."""

    def __init__(self) -> None:
        super().__init__()
        self.token = torch.nn.Embedding(VOCAB + 1, HIDDEN)  # index VOCAB is the start token
        self.position = torch.nn.Parameter(torch.randn(LENGTH, HIDDEN))
        self.head = torch.nn.Linear(HIDDEN, VOCAB)

    def token_log_probs(self, previous: torch.Tensor, t: int) -> torch.Tensor:
        """Log-probabilities of the next token at position ``t`` given the previous token."""
        hidden = torch.tanh(self.token(previous) + self.position[t])
        return torch.log_softmax(self.head(hidden), dim=-1)


def sample_answer(policy: TinyLM, reference: TinyLM) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one answer from ``policy``; return per-token log pi and log pi_ref of its tokens."""
    previous = torch.tensor(VOCAB)
    log_pi, log_ref = [], []
    for t in range(LENGTH):
        logits = policy.token_log_probs(previous, t)
        token = torch.distributions.Categorical(logits=logits).sample()  # every token tried in a check
        log_pi.append(logits[token])
        with torch.no_grad():
            log_ref.append(reference.token_log_probs(previous, t)[token])
        previous = token
    return torch.stack(log_pi), torch.stack(log_ref)


def estimator(name: str, log_ratio: torch.Tensor) -> torch.Tensor:
    """The per-token estimates of the KL, from ``log_ratio = log pi - log pi_ref``."""
    if name == "k1":
        return log_ratio
    if name == "k2":
        return log_ratio**2 / 2
    if name == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(name)


def make_episode(policy: TinyLM, reference: TinyLM, name: str, placement: str, level: str = "token"):
    """An ``episode()`` for the check: objective ``-log(pi(y) / pi_ref(y))``, the estimator's loss."""

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        log_pi, log_ref = sample_answer(policy, reference)
        log_ratio = log_pi - log_ref
        if level == "token":
            penalty = estimator(name, log_ratio).sum()  # summed over the tokens, as trainers do
        else:
            penalty = estimator(name, log_ratio.sum())  # one estimate from the whole answer's ratio
        reward = -penalty.detach()
        if placement == "reward":
            loss = -log_pi.sum() * reward
        elif placement == "loss":
            loss = penalty
        elif placement == "both":  # score term and pathwise term: the full gradient of E[penalty]
            loss = -log_pi.sum() * reward + penalty
        else:
            raise ValueError(placement)
        objective = -log_ratio.sum()  # expectation: -KL(pi || pi_ref)
        return objective, loss

    return episode


def forward_kl_episode(policy: TinyLM, reference: TinyLM):
    """k3 of the whole answer in the loss, against the forward KL(pi_ref || pi).

    ``E_pi[(pi_ref / pi) * log(pi_ref / pi)] = KL(pi_ref || pi)``, so the objective
    ``-(pi_ref(y) / pi(y)) * log(pi_ref(y) / pi(y))`` has expectation ``-KL(pi_ref || pi)``.
    """

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        log_pi, log_ref = sample_answer(policy, reference)
        log_ratio = (log_pi - log_ref).sum()
        ratio = torch.exp(-log_ratio)  # pi_ref(y) / pi(y)
        objective = -ratio * -log_ratio
        return objective, estimator("k3", log_ratio)

    return episode


def exact_values(policy: TinyLM, reference: TinyLM) -> dict[str, float]:
    """KL(pi || pi_ref) and E_pi[sum_t k_t], by summing over all 27 answers directly."""
    totals = {"kl": 0.0, "k1": 0.0, "k2": 0.0, "k3": 0.0}
    with torch.no_grad():
        for answer in itertools.product(range(VOCAB), repeat=LENGTH):
            previous = torch.tensor(VOCAB)
            log_pi, log_ref = [], []
            for t, token in enumerate(answer):
                log_pi.append(policy.token_log_probs(previous, t)[token])
                log_ref.append(reference.token_log_probs(previous, t)[token])
                previous = torch.tensor(token)
            log_ratio = torch.stack(log_pi) - torch.stack(log_ref)
            p = float(torch.stack(log_pi).sum().exp())
            totals["kl"] += p * float(log_ratio.sum())
            for name in ("k1", "k2", "k3"):
                totals[name] += p * float(estimator(name, log_ratio).sum())
    return totals


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def compare(report) -> dict[str, float]:
    target = flat([p.target for p in report.parameters])  # grad KL, since J = -KL
    estimate = flat([p.estimate for p in report.parameters])  # E[grad loss]
    zero = float(estimate.norm()) <= 1e-12 * float(target.norm())
    return {
        "ok": report.ok,
        "relative_bias": float((estimate - target).norm() / target.norm()),
        "relative_size": float(estimate.norm() / target.norm()),
        # The angle between E[grad loss] and grad KL (undefined when the expected gradient is zero).
        "cosine": float("nan") if zero else float(torch.nn.functional.cosine_similarity(estimate, target, dim=0)),
    }


def main() -> dict[str, object]:
    torch.manual_seed(0)
    policy = TinyLM().double()
    reference = TinyLM().double().requires_grad_(False)
    params = dict(policy.named_parameters())

    values = exact_values(policy, reference)
    print(f"KL(pi || pi_ref) = {values['kl']:.6f} over {VOCAB ** LENGTH} answers")
    print(
        "values: E[sum_t k1] = {k1:.6f}, E[sum_t k2] = {k2:.6f}, E[sum_t k3] = {k3:.6f}".format(**values)
    )
    print()

    table: dict[tuple[str, str], dict[str, float]] = {}
    for name in ("k1", "k2", "k3"):
        for placement in ("reward", "loss", "both"):
            report = check_reinforce(make_episode(policy, reference, name, placement), params, raise_exception=False)
            table[name, placement] = compare(report)
    print("Per-token estimators summed over the answer, checked against grad KL(pi || pi_ref):")
    print(f"{'estimator':<9}  {'placement':<9}  {'E[value]/KL':>11}  {'passes':<6}  "
          f"{'||bias||/||grad KL||':>20}  {'||E[grad]||/||grad KL||':>23}  {'cosine':>7}")
    for (name, placement), row in table.items():
        cosine = "-" if row["cosine"] != row["cosine"] else f"{row['cosine']:.4f}"
        print(f"{name:<9}  {placement:<9}  {values[name] / values['kl']:>11.4f}  {str(row['ok']):<6}  "
              f"{row['relative_bias']:>20.4g}  {row['relative_size']:>23.4g}  {cosine:>7}")
    print()

    sequence_level = {
        ("k2", "loss", "KL(pi || pi_ref)"): check_reinforce(
            make_episode(policy, reference, "k2", "loss", level="sequence"), params, raise_exception=False
        ),
        ("k3", "loss", "KL(pi || pi_ref)"): check_reinforce(
            make_episode(policy, reference, "k3", "loss", level="sequence"), params, raise_exception=False
        ),
        ("k3", "loss", "KL(pi_ref || pi)"): check_reinforce(
            forward_kl_episode(policy, reference), params, raise_exception=False
        ),
    }
    print("Whole-answer estimators (k of log pi(y) - log pi_ref(y)) in the loss:")
    print(f"{'estimator':<9}  {'checked against':<18}  {'passes':<6}  {'||bias||/||grad||':>17}")
    sequence_rows = {}
    for (name, placement, against), report in sequence_level.items():
        row = sequence_rows[f"{name} {placement} vs {against}"] = compare(report)
        print(f"{name:<9}  {against:<18}  {str(row['ok']):<6}  {row['relative_bias']:>17.4g}")
    return {"values": values, "per_token": table, "sequence_level": sequence_rows}


if __name__ == "__main__":
    main()
