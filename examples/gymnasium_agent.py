"""Check an agent in a gymnasium environment that has its own randomness.

``SlipperyCorridor`` is written with the gymnasium API (``reset`` and ``step``, a ``Discrete``
action space). With probability 0.2 the floor is slippery and the agent moves the other way; the
slip is drawn with Python's ``random`` module inside ``step``, as many environments do.

An exact check enumerates every draw of an episode, and the slip is not a torch sampler: left as
it is, the check stops with an :class:`~reinforce_check.UninterceptedRandomnessError`. Marking the
agent's policy with :func:`~reinforce_check.enumerate_actions` tells the check which draws are the
agent's actions. Only those are enumerated; every other draw (the slips) samples for real, from
the generator state the check started with, restored before every run. Each action sequence then
meets the same random numbers, the episode is a deterministic function of the actions, and the
check verifies the estimator for that realization of the environment's randomness. The
environment's draws do not depend on the policy's parameters, so an estimator that is unbiased for
every realization is unbiased on average.

The policy needs no edit: ``agent.act = enumerate_actions(agent.act)`` marks it from outside.
Outside a check the marked policy samples exactly as before.

Run it with ``python examples/gymnasium_agent.py``; it takes about a second on a CPU.
"""

from __future__ import annotations

import random

import gymnasium as gym
import torch
from gymnasium import spaces

from reinforce_check import UninterceptedRandomnessError, check_reinforce, enumerate_actions

LEFT, RIGHT = 0, 1


class SlipperyCorridor(gym.Env):
    """Cells 0..4, start in cell 2; cell 4 pays +1, cell 0 pays -1; both end the episode.

    With probability ``slip`` the move is reversed. The episode is truncated after ``max_steps``.
    """

    metadata = {"render_modes": []}

    def __init__(self, length: int = 5, slip: float = 0.2, max_steps: int = 6) -> None:
        self.length = length
        self.slip = slip
        self.max_steps = max_steps
        self.observation_space = spaces.Discrete(length)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.position = self.length // 2
        self.steps = 0
        return self.position, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        move = 1 if action == RIGHT else -1
        slipped = random.random() < self.slip  # the environment's own randomness
        if slipped:
            move = -move
        self.position += move
        self.steps += 1
        terminated = self.position in (0, self.length - 1)
        reward = 1.0 if self.position == self.length - 1 else -1.0 if self.position == 0 else 0.0
        truncated = self.steps >= self.max_steps and not terminated
        return self.position, reward, terminated, truncated, {"slipped": slipped}


class Agent:
    """A tabular softmax policy: one row of logits per cell."""

    def __init__(self, num_states: int, num_actions: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.logits = (0.5 * torch.randn(num_states, num_actions, generator=generator, dtype=torch.float64)).requires_grad_()

    def act(self, observation: int) -> tuple[int, torch.Tensor]:
        dist = torch.distributions.Categorical(logits=self.logits[observation])
        action = dist.sample()
        return int(action), dist.log_prob(action)


def run_episode(env: gym.Env, agent: Agent) -> tuple[list[int], list[float], torch.Tensor]:
    """One episode through the gymnasium API: the actions, the rewards, the log-probabilities."""
    observation, _ = env.reset()
    actions, rewards, log_probs = [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action, log_prob = agent.act(observation)
        observation, reward, terminated, truncated, _ = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        log_probs.append(log_prob)
    return actions, rewards, torch.stack(log_probs)


def make_episode(env: gym.Env, agent: Agent):
    """REINFORCE with reward-to-go; the objective is the episode's total reward."""

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        _, rewards, log_probs = run_episode(env, agent)
        returns = torch.tensor(rewards, dtype=torch.float64).flip(0).cumsum(0).flip(0)
        return returns[0], -(log_probs * returns).sum()

    return episode


def main() -> dict[str, object]:
    env = SlipperyCorridor()
    agent = Agent(num_states=env.length, num_actions=2)
    params = {"logits": agent.logits}
    results: dict[str, object] = {}

    print("1. Without enumerate_actions, the slips are randomness the check cannot enumerate:")
    random.seed(0)
    try:
        check_reinforce(make_episode(env, agent), params)
    except UninterceptedRandomnessError as error:
        results["unmarked_error"] = type(error).__name__
        print(f"   {type(error).__name__}: {str(error).split('. ')[0]}.")
    print()

    # Outside a check, record a few episodes before marking the policy, for comparison below.
    random.seed(1)
    torch.manual_seed(1)
    before = [run_episode(env, agent)[0] for _ in range(4)]

    print("2. The agent's act() marked with enumerate_actions, without editing its source:")
    agent.act = enumerate_actions(agent.act)
    random.seed(0)
    report = check_reinforce(make_episode(env, agent), params)
    print(report)
    results["ok"] = report.ok
    results["num_sequences"] = report.num_sequences
    results["notes"] = list(report.notes)
    print()

    print("3. Other realizations of the slips (other seeds): other J, same verdict.")
    by_seed = results["by_seed"] = {}
    for seed in (1, 2, 3):
        random.seed(seed)
        report = check_reinforce(make_episode(env, agent), params)
        by_seed[seed] = {"ok": report.ok, "J": report.objective, "num_sequences": report.num_sequences}
        print(f"   random.seed({seed}): ok={report.ok}, {report.num_sequences} action sequences, J = {report.objective:.6f}")
    print()

    print("4. Outside a check, the marked policy samples as before (same seeds, same episodes):")
    random.seed(1)
    torch.manual_seed(1)
    after = [run_episode(env, agent)[0] for _ in range(4)]
    for plain, marked in zip(before, after):
        print(f"   unmarked {plain}   marked {marked}")
    results["same_outside_check"] = before == after
    results["outside_check_actions"] = after
    print(f"   identical: {before == after}")
    return results


if __name__ == "__main__":
    main()
