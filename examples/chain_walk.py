"""ChainWalk: a tiny deterministic gymnasium environment, a chain of fixed length, for the integration
examples (``sb3_bias_table.py``, ``cleanrl_ppo.py``, ``torchrl_bias_table.py``) and tests.

Every episode lasts exactly ``horizon`` steps, so a rollout of ``n_steps = horizon`` covers one
whole episode and the tree of action sequences has ``2 ** horizon`` leaves. Rewards depend on the
actions and on the position reached, so that the return is not a sum of per-step functions of
each action alone (a baseline error or a missing term shows as bias).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ChainWalk(gym.Env):
    """Position starts at 0; action 1 moves right (+1), action 0 left (-1), for ``horizon`` steps.

    The observation is the one-hot of the step with the position (scaled) appended; the reward is
    0.5 for a right move at the first step, 1 at later ones, plus 0.25 for standing at position 1.
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 4) -> None:
        self.horizon = horizon
        self.observation_space = spaces.Box(-1.0, 1.0, (horizon + 1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0
        self.position = 0

    def _observation(self) -> np.ndarray:
        observation = np.zeros(self.horizon + 1, np.float32)
        observation[min(self.t, self.horizon - 1)] = 1.0
        observation[-1] = self.position / self.horizon
        return observation

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.position = 0
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        right = int(action) == 1
        self.position += 1 if right else -1
        reward = (0.5 if self.t == 0 else 1.0) * right + (0.25 if self.position == 1 else 0.0)
        self.t += 1
        return self._observation(), float(reward), self.t >= self.horizon, False, {}
