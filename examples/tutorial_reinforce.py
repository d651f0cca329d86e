"""A REINFORCE agent written the way the common PyTorch tutorial writes it, checked exactly.

The tutorial is the REINFORCE example of the pytorch/examples repository
(``reinforcement_learning/reinforce.py``), copied into many courses and blog posts.

The agent is a small MLP policy in a tiny deterministic corridor. The tutorial's recipe computes
the discounted returns of the episode, standardizes them within the episode,
``(G_t - mean) / (std + eps)``, and minimizes ``-sum_t log pi(a_t | s_t) * G_t``. Three variants
are checked against the objective they are meant to maximize, the discounted return
``sum_t gamma**t * r_t``:

1. the tutorial's loss, returns standardized within the episode: biased, because the mean and the
   standard deviation depend on the actions the episode took;
2. plain discounted reward-to-go, without the standardization: still biased for the discounted
   objective, because the term of step ``t`` lacks its factor ``gamma**t``;
3. discounted reward-to-go weighted by ``gamma**t``: the exact policy gradient, so the check passes.

Run it with ``python examples/tutorial_reinforce.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import torch

from reinforce_check import check_reinforce

NUM_CELLS = 5
START = 2
MAX_STEPS = 5
GAMMA = 0.9
EPS = 1e-8
LEFT, STAY, RIGHT = 0, 1, 2


class Corridor:
    """Cells 0..4; the agent starts in cell 2 and moves left, stays or moves right.

    Reaching cell 4 pays +1 and ends the episode, reaching cell 0 pays -1 and ends it, and every
    step costs 0.05. The episode is cut off after ``MAX_STEPS`` steps. No randomness at all: the
    episode is a deterministic function of the agent's actions, as an exact check requires.
    """

    def reset(self) -> torch.Tensor:
        self.cell = START
        self.steps = 0
        return self.observation()

    def observation(self) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(self.cell), NUM_CELLS).to(torch.float64)

    def step(self, action: int) -> tuple[torch.Tensor, float, bool]:
        self.cell += {LEFT: -1, STAY: 0, RIGHT: 1}[action]
        self.steps += 1
        reward = -0.05
        if self.cell == NUM_CELLS - 1:
            reward += 1.0
        elif self.cell == 0:
            reward -= 1.0
        done = self.cell in (0, NUM_CELLS - 1) or self.steps == MAX_STEPS
        return self.observation(), reward, done


class Policy(torch.nn.Module):
    """A two-layer MLP from the one-hot cell to logits over the three actions."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(NUM_CELLS, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 3),
        )

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layers(observation), dim=-1)


def play(policy: Policy, env: Corridor) -> tuple[torch.Tensor, list[float]]:
    """Run one episode; return the log-probabilities of the actions taken and the rewards."""
    observation = env.reset()
    log_probs, rewards = [], []
    done = False
    while not done:
        dist = torch.distributions.Categorical(probs=policy(observation))
        action = dist.sample()  # during a check every action is tried in turn
        log_probs.append(dist.log_prob(action))
        observation, reward, done = env.step(int(action))
        rewards.append(reward)
    return torch.stack(log_probs), rewards


def discounted_returns(rewards: list[float]) -> torch.Tensor:
    """``G_t = r_t + gamma * r_{t+1} + gamma**2 * r_{t+2} + ...`` for every step."""
    returns = []
    running = 0.0
    for reward in reversed(rewards):
        running = reward + GAMMA * running
        returns.append(running)
    return torch.tensor(returns[::-1], dtype=torch.float64)


def discounted_return(rewards: list[float]) -> torch.Tensor:
    """The objective: ``sum_t gamma**t * r_t``, the quantity whose expectation the agent maximizes."""
    return discounted_returns(rewards)[0]


def make_episode(policy: Policy, variant: str):
    """An ``episode()`` for :func:`check_reinforce`: returns ``(objective, loss)`` for one episode."""
    env = Corridor()

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, rewards = play(policy, env)
        returns = discounted_returns(rewards)
        if variant == "tutorial":
            # Standardized within the episode, as in the common tutorial.
            weights = (returns - returns.mean()) / (returns.std() + EPS)
        elif variant == "reward-to-go":
            weights = returns
        elif variant == "corrected":
            discount = GAMMA ** torch.arange(len(rewards), dtype=torch.float64)
            weights = discount * returns
        else:
            raise ValueError(variant)
        loss = -(log_probs * weights).sum()
        return discounted_return(rewards), loss

    return episode


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def bias_figures(report) -> dict[str, float]:
    """Size of the bias relative to the true gradient, and the angle between the two."""
    target = flat([p.target for p in report.parameters])  # -grad J
    estimate = flat([p.estimate for p in report.parameters])  # E[grad loss]
    return {
        "relative_bias": float((estimate - target).norm() / target.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(estimate, target, dim=0)),
    }


def main() -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    policy = Policy().double()
    params = dict(policy.named_parameters())
    results: dict[str, dict[str, float]] = {}
    titles = {
        "tutorial": "1. The tutorial's loss: discounted returns standardized within the episode",
        "reward-to-go": "2. Discounted reward-to-go, not standardized",
        "corrected": "3. Discounted reward-to-go weighted by gamma**t: the policy gradient of the discounted return",
    }
    for variant, title in titles.items():
        report = check_reinforce(make_episode(policy, variant), params, raise_exception=False)
        figures = {"ok": report.ok, "num_sequences": report.num_sequences, "J": report.objective}
        figures.update(bias_figures(report))
        results[variant] = figures
        print(title)
        print(report)
        print(
            f"-> ok={report.ok}: ||bias|| / ||grad J|| = {figures['relative_bias']:.3g}, "
            f"cosine(E[grad loss], -grad J) = {figures['cosine']:.4f}"
        )
        print()
    return results


if __name__ == "__main__":
    main()
