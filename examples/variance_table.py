"""The exact variance of REINFORCE with and without baselines, on one small problem.

Baselines exist to reduce the variance of the policy gradient without biasing it. With
``variance=True`` the check computes, besides the bias, the exact variance of the single-episode
estimator ``grad loss(a)`` over all action sequences, element by element; summed over the
parameters it is the trace of the estimator's covariance. No sampling is involved, so the
differences between methods are exact, not noise.

The problem: a walker on a line takes 3 steps, each moving left, staying or moving right, and
earns ``1 + 0.5 * position`` after every step (so every reward is far from zero, where a baseline
matters). The policy is a table of logits per step and position. The estimators, all with
reward-to-go ``G_t`` except the first:

* total return, no baseline: ``-sum_t log pi_t * G_0``;
* reward-to-go, no baseline: ``-sum_t log pi_t * G_t``;
* a constant baseline per step: ``G_t - b_t`` with ``b_t = E[G_t]``;
* a state-value baseline: ``G_t - V(s_t)``, with ``V`` the exact expected reward-to-go from each
  state, computed by dynamic programming: what a learned value function converges to;
* RLOO over 2 episodes: each episode's ``G_t`` minus the other episode's ``G_t``;
* for comparison with RLOO, the mean of 2 episodes' reward-to-go estimators, no baseline.

All pass the check (baselines that do not depend on the episode's own actions add no bias); the
table shows how much variance each removes.

Run it with ``python examples/variance_table.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import torch

from reinforce_check import check_reinforce

STEPS = 3
MOVES = (-1, 0, 1)
POSITIONS = 2 * STEPS + 1  # positions -3..3, stored at index position + STEPS


def reward(position: int) -> float:
    return 1.0 + 0.5 * position


def walk(logits: torch.Tensor) -> tuple[list[int], torch.Tensor, list[float]]:
    """One episode: the states visited (before each step), the log-probabilities, the rewards."""
    position = 0
    states, log_probs, rewards = [], [], []
    for t in range(STEPS):
        states.append(position)
        dist = torch.distributions.Categorical(logits=logits[t, position + STEPS])
        action = dist.sample()
        log_probs.append(dist.log_prob(action))
        position += MOVES[int(action)]
        rewards.append(reward(position))
    return states, torch.stack(log_probs), rewards


def rewards_to_go(rewards: list[float]) -> torch.Tensor:
    return torch.tensor(rewards, dtype=torch.float64).flip(0).cumsum(0).flip(0)


def exact_values(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``V[t, position]``: expected reward-to-go from each state, and ``b[t] = E[G_t]``, by dynamic programming."""
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        value = torch.zeros(STEPS + 1, POSITIONS, dtype=torch.float64)
        for t in reversed(range(STEPS)):
            for index in range(POSITIONS):
                position = index - STEPS
                for a, move in enumerate(MOVES):
                    after = min(max(position + move, -STEPS), STEPS)
                    value[t, index] += probs[t, index, a] * (reward(after) + value[t + 1, after + STEPS])
        # Distribution of the position at each step, to average V into the mean reward-to-go.
        occupancy = torch.zeros(STEPS, POSITIONS, dtype=torch.float64)
        occupancy[0, STEPS] = 1.0
        for t in range(STEPS - 1):
            for index in range(POSITIONS):
                for a, move in enumerate(MOVES):
                    after = min(max(index - STEPS + move, -STEPS), STEPS)
                    occupancy[t + 1, after + STEPS] += occupancy[t, index] * probs[t, index, a]
        mean_to_go = (occupancy * value[:STEPS]).sum(dim=1)
    return value, mean_to_go


EPISODES = {
    "total return, no baseline": 1,
    "reward-to-go, no baseline": 1,
    "constant baseline b_t = E[G_t]": 1,
    "state-value baseline V(s_t)": 1,
    "mean of 2, no baseline": 2,
    "RLOO, 2 episodes": 2,
}
"""Each method, and how many episodes one estimate uses."""


def make_episode(logits: torch.Tensor, method: str, value: torch.Tensor, mean_to_go: torch.Tensor):
    """An ``episode()`` for the check; the objective is the (mean) total reward."""
    group = EPISODES[method]

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        runs = [walk(logits) for _ in range(group)]
        to_go = [rewards_to_go(rewards) for _, _, rewards in runs]
        losses = []
        for i, (states, log_probs, _) in enumerate(runs):
            if method == "total return, no baseline":
                weights = to_go[i][0].expand(STEPS)
            elif method in ("reward-to-go, no baseline", "mean of 2, no baseline"):
                weights = to_go[i]
            elif method == "constant baseline b_t = E[G_t]":
                weights = to_go[i] - mean_to_go
            elif method == "state-value baseline V(s_t)":
                weights = to_go[i] - value[torch.arange(STEPS), torch.tensor(states) + STEPS]
            elif method == "RLOO, 2 episodes":
                others = [g for j, g in enumerate(to_go) if j != i]
                weights = to_go[i] - torch.stack(others).mean(dim=0)
            else:
                raise ValueError(method)
            losses.append(-(log_probs * weights).sum())
        objective = torch.stack([g[0] for g in to_go]).mean()
        return objective, torch.stack(losses).mean()

    return episode




def main() -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(0)
    logits = (0.5 * torch.randn(STEPS, POSITIONS, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    value, mean_to_go = exact_values(logits)
    rows: dict[str, dict[str, float]] = {}
    for method in EPISODES:
        report = check_reinforce(
            make_episode(logits, method, value, mean_to_go), {"logits": logits}, variance=True, raise_exception=False
        )
        rows[method] = {
            "ok": report.ok,
            "episodes": EPISODES[method],
            "num_sequences": report.num_sequences,
            "J": report.objective,
            "variance": sum(float(p.variance.sum()) for p in report.parameters if p.variance is not None),
        }
    print(f"J = {rows['reward-to-go, no baseline']['J']:.6f}; E[G_t] = {[round(float(b), 4) for b in mean_to_go]}")
    print()
    print(f"{'method':<32}  {'episodes':>8}  {'sequences':>9}  {'passes':<6}  {'variance sum':>12}  "
          f"{'ratio to no baseline':>20}")
    print(f"{'':<32}  {'':>8}  {'':>9}  {'':<6}  {'':>12}  {'(same episodes)':>20}")
    for method, row in rows.items():
        # Compare with the estimator without a baseline that uses the same number of episodes.
        reference = rows["mean of 2, no baseline" if row["episodes"] == 2 else "reward-to-go, no baseline"]
        row["ratio"] = row["variance"] / reference["variance"]
        print(f"{method:<32}  {row['episodes']:>8}  {row['num_sequences']:>9,}  {str(row['ok']):<6}  "
              f"{row['variance']:>12.6f}  {row['ratio']:>20.4f}")
    half = rows["mean of 2, no baseline"]["variance"] / rows["reward-to-go, no baseline"]["variance"]
    print()
    print(f"Averaging 2 independent episodes halves the variance exactly: ratio {half:.12f}.")
    return rows


if __name__ == "__main__":
    main()
