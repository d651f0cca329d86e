"""How long a check takes, as a ratio to plain training passes over the same sequences.

Every ratio divides two times measured in the same run (medians of several repeats, the check and
its baseline alternated within each repeat, so that a slow spell of a shared machine weighs on both):

* batched mode: ``check_reinforce(..., batched=True)`` against one plain batched forward and backward
  of the same policy over all its action sequences (the floor for any exact check);
* sequential mode: ``check_reinforce(...)`` against running the same episodes plainly one by one,
  forward and backward each.

Each case also times the floor of a default check: the passes it cannot avoid, run plainly (one
forward pass with gradient and two backward passes over every sequence, for the two gradients,
and two forward passes without gradient, for the central difference of the exact J).

Cases: an LSTM policy with 3 actions over 7 steps (3**7 = 2,187 sequences) and a variable-length
policy whose third action stops the episode (255 sequences over at most 7 steps). For each, the
exact variance gives the number of Monte Carlo episodes a sampled estimate would need to reach the
check's precision.

A third case is PPO-style code: the same LSTM policy collects its rollout under
``torch.no_grad()`` and the loss recomputes the log-probabilities of the actions taken. Its check,
with the sampling function marked with ``enumerate_actions`` (so that autograd decides) and
without (so that central differences of the exact J decide), is timed against the check of the
same code with the rollout's gradient left on.

Usage::

    python benchmarks/bench_check.py            # prints the table, writes benchmarks/results.txt
    python benchmarks/bench_check.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from reinforce_check import check_reinforce, enumerate_actions

ACTIONS = 3
HIDDEN = 16
STEPS = 7


class LSTMPolicy(torch.nn.Module):
    """A small recurrent policy: the previous action in, a categorical over ACTIONS out."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.LSTMCell(ACTIONS, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, ACTIONS)


def make_episode(policy: LSTMPolicy, *, stop_action: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """REINFORCE with reward-to-go; reward 1 for matching a fixed target, optional stop action.

    With ``stop_action`` the episode ends when action 2 is taken; rows that have ended are given a
    distribution with a single feasible action, so they do not branch in batched mode.
    """
    target = torch.tensor([0, 1, 0, 1, 0, 1, 0])

    def episode(batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch_size or 1
        h = torch.zeros(rows, HIDDEN, dtype=torch.float64)
        c = torch.zeros_like(h)
        x = torch.zeros(rows, ACTIONS, dtype=torch.float64)
        done = torch.zeros(rows, dtype=torch.bool)
        log_probs, rewards = [], []
        for t in range(STEPS):
            h, c = policy.cell(x, (h, c))
            logits = policy.head(h)
            if stop_action:
                forced = torch.full_like(logits, float("-inf"))
                forced[:, 0] = 0.0
                logits = torch.where(done[:, None], forced, logits)
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            live = (~done).double()
            log_probs.append(dist.log_prob(action) * live)
            rewards.append((action == target[t]).double() * live)
            if stop_action:
                done = done | (action == 2)
            x = torch.nn.functional.one_hot(action, ACTIONS).double()
        log_prob = torch.stack(log_probs, 1)
        reward = torch.stack(rewards, 1)
        to_go = reward.flip(1).cumsum(1).flip(1)
        objective = reward.sum(1)
        loss = -(log_prob * to_go).sum(1)
        if batch_size is None:
            return objective[0], loss[0]
        return objective, loss

    return episode


def make_rollout_episode(
    policy: LSTMPolicy, *, rollout_gradient: bool, marked: bool
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """PPO-style REINFORCE: a rollout (under ``torch.no_grad()`` unless ``rollout_gradient``), then
    the log-probabilities of its actions recomputed with gradient; reward-to-go as above."""
    target = torch.tensor([0, 1, 0, 1, 0, 1, 0])

    def log_probs_of(actions: torch.Tensor | None, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the policy over the steps: sample when ``actions`` is None, else score them."""
        h = torch.zeros(rows, HIDDEN, dtype=torch.float64)
        c = torch.zeros_like(h)
        x = torch.zeros(rows, ACTIONS, dtype=torch.float64)
        taken, log_probs = [], []
        for t in range(STEPS):
            h, c = policy.cell(x, (h, c))
            dist = torch.distributions.Categorical(logits=policy.head(h))
            action = dist.sample() if actions is None else actions[:, t]
            taken.append(action)
            log_probs.append(dist.log_prob(action))
            x = torch.nn.functional.one_hot(action, ACTIONS).double()
        return torch.stack(taken, 1), torch.stack(log_probs, 1)

    def rollout(rows: int) -> torch.Tensor:
        return log_probs_of(None, rows)[0]

    sample = enumerate_actions(rollout) if marked else rollout

    def episode(batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch_size or 1
        with torch.set_grad_enabled(rollout_gradient):
            actions = sample(rows)
        _, log_prob = log_probs_of(actions, rows)
        reward = (actions == target).double()
        to_go = reward.flip(1).cumsum(1).flip(1)
        objective, loss = reward.sum(1), -(log_prob * to_go).sum(1)
        if batch_size is None:
            return objective[0], loss[0]
        return objective, loss

    return episode


def run_rollout_case(repeats: int) -> list[str]:
    """The check of a no-gradient rollout against the check of the same code with gradient."""
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())
    episodes = {
        "rollout with gradient": make_rollout_episode(policy, rollout_gradient=True, marked=False),
        "no_grad rollout, marked": make_rollout_episode(policy, rollout_gradient=False, marked=True),
        "no_grad rollout, unmarked": make_rollout_episode(policy, rollout_gradient=False, marked=False),
    }
    reports = {name: check_reinforce(episode, params, batched=True) for name, episode in episodes.items()}
    times = median_times(
        {name: (lambda episode=episode: check_reinforce(episode, params, batched=True)) for name, episode in episodes.items()},
        repeats,
    )
    base = times["rollout with gradient"]
    lines = [
        f"PPO-style rollout, then log-probabilities recomputed: {reports['rollout with gradient'].num_sequences:,} "
        f"sequences, {len(params)} parameter tensors, batched, finite_differences=joint"
    ]
    for name, report in reports.items():
        lines.append(
            f"  {name:<26} check {times[name] * 1e3:8.1f} ms   ratio to the rollout with gradient "
            f"{times[name] / base:5.2f}x   ground truth: {report.ground_truth}"
        )
    return lines


def median_times(
    functions: dict[str, Callable[[], object]], repeats: int, *, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Median time of each function, run in turn within every repeat (after one warm-up each), so that
    a slow spell of a shared machine weighs on all of them alike. ``clock``: wall-clock by default;
    ``time.process_time`` counts this process's CPU time instead."""
    for function in functions.values():
        function()  # warm up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = clock()
            function()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


CASES = {"variable": True, "fixed": False}
"""Case names for scripts that take one: whether action 2 stops the episode (255 sequences) or
not (3 actions x 7 steps, 2,187 sequences)."""


def forward_and_two_backward(
    episode: Callable[..., tuple[torch.Tensor, torch.Tensor]], tensors: list[torch.Tensor], rows: int | None
) -> None:
    """A forward pass with gradient of ``rows`` episodes (one unbatched episode for None) and the
    check's two backward passes over its graph: grad J, then the expected grad loss."""
    loss = (episode(rows) if rows else episode())[1].sum()
    torch.autograd.grad(loss, tensors, retain_graph=True)
    torch.autograd.grad(loss, tensors)


def run_floor(
    episode: Callable[..., tuple[torch.Tensor, torch.Tensor]], tensors: list[torch.Tensor], calls: list[int | None]
) -> None:
    """The floor of a default check, what no exact check can avoid, over the episode ``calls``
    (``[count]``: one batched call; ``[None] * count``: one episode at a time): for each, a forward
    pass with gradient and two backward passes, and two forward passes without gradient (the two
    evaluations of J for central differences)."""
    for rows in calls:
        forward_and_two_backward(episode, tensors, rows)
        with torch.no_grad():
            for _ in range(2):
                episode(rows) if rows else episode()


def monte_carlo_episodes(report, rtol: float, atol: float) -> tuple[float, float]:
    """Episodes a sampled mean of grad loss needs for one standard error within the tolerance.

    Returns the count for the check's own tolerance and for the 10% relative tolerance that sampled
    unbiasedness tests use, both for the worst element of any parameter.
    """
    exact_tol, loose_tol = 0.0, 0.0
    for p in report.parameters:
        variance = p.variance.reshape(-1)
        scale = p.target.abs().reshape(-1)
        exact_tol = max(exact_tol, float((variance / (atol + rtol * scale) ** 2).max()))
        significant = scale > 1e-3 * float(scale.max())
        loose_tol = max(loose_tol, float((variance[significant] / (0.1 * scale[significant]) ** 2).max()))
    return exact_tol, loose_tol


def run_case(name: str, stop_action: bool, repeats: int) -> list[str]:
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())
    episode = make_episode(policy, stop_action=stop_action)
    report = check_reinforce(episode, params, batched=True, variance=True)
    count = report.num_sequences

    def plain_batched() -> None:
        # The same number of rows as the check enumerates: the floor for any exact check.
        objective, loss = episode(count)
        loss.sum().backward()

    def plain_sequential() -> None:
        for _ in range(count):
            objective, loss = episode()
            loss.backward()

    tensors = list(params.values())

    def floor_batched() -> None:
        run_floor(episode, tensors, [count])

    def floor_sequential() -> None:
        run_floor(episode, tensors, [None] * count)

    rows = []
    batched = median_times(
        {
            "plain": plain_batched,
            "floor": floor_batched,
            **{
                mode: (lambda mode=mode: check_reinforce(episode, params, batched=True, finite_differences=mode))
                for mode in ("joint", "tensor", "none")
            },
        },
        repeats,
    )
    for mode in ("joint", "tensor", "none"):
        rows.append((name, "batched", mode, batched[mode], batched["plain"]))
    sequential = median_times(
        {
            "plain": plain_sequential,
            "floor": floor_sequential,
            **{
                mode: (lambda mode=mode: check_reinforce(episode, params, finite_differences=mode))
                for mode in ("joint", "none")
            },
        },
        max(1, repeats // 3),
    )
    for mode in ("joint", "none"):
        rows.append((name, "sequential", mode, sequential[mode], sequential["plain"]))
    exact_tol, loose_tol = monte_carlo_episodes(report, report.rtol, report.atol)
    lines = [
        f"{name}: {count:,} sequences, {len(params)} parameter tensors; "
        f"worst relative error of the check {report.max_rel_error:.1e}",
    ]
    for case, mode, fd, t, base in rows:
        lines.append(
            f"  {mode:<10} finite_differences={fd:<7} check {t * 1e3:8.1f} ms   plain {base * 1e3:8.1f} ms   "
            f"ratio {t / base:5.2f}x"
        )
    for mode, times in (("batched", batched), ("sequential", sequential)):
        lines.append(
            f"  {mode:<10} floor of a default check  {times['floor'] * 1e3:8.1f} ms   plain "
            f"{times['plain'] * 1e3:8.1f} ms   ratio {times['floor'] / times['plain']:5.2f}x   "
            "(forward + 2 backward passes, 2 forward passes without gradient)"
        )
    lines.append(
        f"  Monte Carlo episodes for one standard error within the check's tolerance "
        f"(rtol={report.rtol:g}, atol={report.atol:g}): {exact_tol:.2e}; within 10% of each gradient "
        f"element: {loose_tol:.2e}"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.txt"))
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    header = [
        "reinforce_check benchmark: time of a check / time of plain passes over the same sequences",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}; medians of {repeats} (batched) and {max(1, repeats // 3)} "
        "(sequential) repeats, the check and its plain baseline alternated within each repeat",
        "command: python benchmarks/bench_check.py",
        "",
    ]
    lines = header
    lines += run_case("LSTM, 3 actions x 7 steps", stop_action=False, repeats=repeats)
    lines.append("")
    lines += run_case("LSTM, variable length (action 2 stops)", stop_action=True, repeats=repeats)
    lines.append("")
    lines += run_rollout_case(max(1, repeats // 3))
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
