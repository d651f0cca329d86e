"""The showcase: exact gradient checks, then the RL-NTM checked, trained to solved, and traced.

Part A checks two REINFORCE estimators for a tiny LSTM policy, exactly. The policy picks one of 3
actions at each of 5 steps (3**5 = 243 action sequences) and earns a reward of 1 whenever its
action matches a fixed target pattern.

1. REINFORCE with reward-to-go, ``loss = -sum_t log pi(a_t) * G_t``: unbiased, so the check passes.
2. The same with the returns standardized within the episode (minus their mean, divided by their
   standard deviation, over the episode's own steps), as a widely copied tutorial does. The mean and
   standard deviation depend on the sampled actions, so the estimator is biased, and the check says so.

Part B is the RL-NTM of Zaremba & Sutskever:

3. the exact gradient check of the whole model (direct-access controller, Copy task, both
   baselines, reward-to-go);
4. training on Copy with the ``fast`` preset until it is solved (top curriculum level, greedy
   exact accuracy of at least 99% at length 20), with a progress bar;
5. a Figure 7-style trace of the solved model on a fresh instance, written as a PNG.

Run it with ``python examples/showcase.py [OUT]`` (OUT defaults to ``runs/showcase``); it takes
about a minute on a laptop CPU.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from reinforce_check import check_reinforce

NUM_ACTIONS = 3
NUM_STEPS = 5
HIDDEN = 8
TARGET = torch.tensor([0, 1, 2, 1, 0])
"""The action that earns a reward at each step."""


class LSTMPolicy(torch.nn.Module):
    """An LSTM that reads the previous action and outputs logits over the next one."""

    def __init__(self, num_actions: int = NUM_ACTIONS, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.cell = torch.nn.LSTMCell(num_actions + 1, hidden)
        self.head = torch.nn.Linear(hidden, num_actions)

    def rollout(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``batch_size`` independent episodes.

        Returns:
            ``(log_probs, rewards)``, both of shape ``(batch_size, NUM_STEPS)``.
        """
        h = torch.zeros(batch_size, self.cell.hidden_size, dtype=torch.float64)
        c = torch.zeros_like(h)
        # The input is the one-hot previous action; the extra last column marks the first step.
        previous = torch.zeros(batch_size, self.num_actions + 1, dtype=torch.float64)
        previous[:, -1] = 1.0
        log_probs, rewards = [], []
        for step in range(NUM_STEPS):
            h, c = self.cell(previous, (h, c))
            dist = torch.distributions.Categorical(logits=self.head(h))
            action = dist.sample()  # intercepted during a check
            log_probs.append(dist.log_prob(action))
            rewards.append((action == TARGET[step]).to(torch.float64))
            previous = torch.nn.functional.one_hot(action, self.num_actions + 1).to(torch.float64)
        return torch.stack(log_probs, dim=1), torch.stack(rewards, dim=1)


def rewards_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """``G_t = r_t + r_{t+1} + ... + r_T`` for every step, row by row (undiscounted)."""
    return rewards.flip(1).cumsum(1).flip(1)


def make_episode(policy: LSTMPolicy, *, standardize: bool):
    """An ``episode(batch_size)`` for :func:`check_reinforce` in batched mode.

    It returns the per-row objective (the total reward, whose expectation REINFORCE maximizes) and
    the per-row loss the implementation minimizes.
    """

    def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, rewards = policy.rollout(batch_size)
        returns = rewards_to_go(rewards)
        if standardize:
            # The tutorial's normalization, over the episode's own steps: biased.
            mean = returns.mean(dim=1, keepdim=True)
            std = returns.std(dim=1, keepdim=True)
            returns = (returns - mean) / (std + 1e-8)
        loss = -(log_probs * returns.detach()).sum(dim=1)
        return rewards.sum(dim=1), loss

    return episode


def main(out: str | Path = "runs/showcase") -> None:
    """Run the whole showcase; the RL-NTM's run goes to ``OUT/copy-direct-fast``."""
    check_estimators()
    print()
    rlntm(Path(out))


def check_estimators() -> None:
    """Part A: the two estimators of the tiny LSTM policy."""
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())

    print("1. REINFORCE with reward-to-go (batched mode, with the exact variance)")
    report = check_reinforce(make_episode(policy, standardize=False), params, batched=True, variance=True)
    print(report)

    print()
    print("2. The same, with returns standardized within each episode")
    report = check_reinforce(make_episode(policy, standardize=True), params, batched=True, raise_exception=False)
    print(report)
    print()
    if report.ok:
        print("Unexpected: the check did not detect the bias of standardized returns.")
        raise SystemExit(1)
    print(
        f"The check found the bias: over all {report.num_sequences} action sequences, the expected gradient of the "
        f"standardized loss differs from the exact -grad J (largest relative error {report.max_rel_error:.2g})."
    )



def rlntm(out: Path) -> None:
    """Part B: check the RL-NTM exactly, train it on Copy to solved, and draw a trace."""
    from rlntm_demo.check import check_model
    from rlntm_demo.presets import make_config
    from rlntm_demo.tasks import make_task
    from rlntm_demo.traces import render_figure, render_text
    from rlntm_demo.training import Trainer, train

    print("3. The RL-NTM's gradient, exactly (rlntm-demo check --task copy --controller direct)")
    for what, report in zip(("policy", "baseline LSTM"), check_model("copy", "direct")):
        print(f"   {what}: {'PASSED' if report.ok else 'FAILED'} over {report.num_sequences} action "
              f"sequences, largest relative error {report.max_rel_error:.1e}")
        if not report.ok:
            print(report)
            raise SystemExit(1)

    print()
    print("4. Training Copy with the direct-access controller and the fast preset")
    run = out / "copy-direct-fast"
    if run.exists():
        shutil.rmtree(run)  # this script's own output from an earlier run
    # Stop at the solving update: the preset's 1,000 further updates sharpen long inputs, which
    # the showcase does not test, and would triple its training time.
    config = make_config("copy", "direct", "fast", seed=0, max_updates=1500, overrides=["updates_after_solved=0"])
    summary = train(config, run)
    accuracy = ", ".join(f"{m}x {a:.1%}" for m, a in summary["greedy_exact_accuracy"].items())
    print(f"   solved: {summary['solved']} at update {summary['updates_to_solve']} "
          f"({summary['episodes']:,} episodes, {summary['seconds']:.0f} s); greedy exact accuracy {accuracy}")
    if not summary["solved"]:
        print("Unexpected: Copy was not solved.")
        raise SystemExit(1)

    print()
    print("5. A trace of the solved model on a fresh instance of length 8")
    from rlntm_demo.checkpoints import load_checkpoint

    trainer = Trainer.from_checkpoint(load_checkpoint(run))
    batch = make_task("copy").sample(8, 1, torch.Generator().manual_seed(1))
    trace = trainer.model.trace(batch)
    print(render_text(trace))
    png = render_figure(trace, run / "trace.png", title="Copy, direct access, fast preset: greedy trace")
    print(f"   wrote {png} and {run}/metrics.csv (plot it: rlntm-demo plot {run} --out {run}/curves.png)")


if __name__ == "__main__":
    main(*sys.argv[1:2])
