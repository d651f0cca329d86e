"""Adapters that check the policy gradients of RL libraries on their own objects.

Each adapter lives in its own module and imports its library only when called, so that
``import reinforce_check.integrations`` costs nothing and needs none of them:

* :mod:`reinforce_check.integrations.sb3`: Stable-Baselines3's A2C and PPO
  (:func:`~reinforce_check.integrations.sb3.check_sb3`);
* :mod:`reinforce_check.integrations.trl`: TRL's ``GRPOTrainer``
  (:func:`~reinforce_check.integrations.trl.check_grpo`) and ``RLOOTrainer``
  (:func:`~reinforce_check.integrations.trl.check_rloo`);
* :mod:`reinforce_check.integrations.torchrl`: torchrl's ``ReinforceLoss``, ``A2CLoss`` and PPO
  losses on a rollout of a torchrl environment
  (:func:`~reinforce_check.integrations.torchrl.check_torchrl`).

Code that builds its loss inside its own training step and is not covered here is checked with
:func:`~reinforce_check.capture_loss` (see :doc:`/integrations/training-step`).

>>> from reinforce_check.integrations import IntegrationError
>>> from reinforce_check import CheckUsageError
>>> issubclass(IntegrationError, CheckUsageError)
True
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Literal, Union

import numpy as np
import torch

from ..check import Params
from ..errors import CheckUsageError
from ..report import CheckReport

__all__ = ["IntegrationError", "ParameterChoice", "import_library", "relative_bias", "rollout_return"]

ParameterChoice = Union[Literal["actor", "all"], Params]
"""What an adapter checks: ``"actor"`` (the parameters of the action distribution), ``"all"``, or
the parameters themselves, as for :func:`~reinforce_check.check_reinforce`."""


class IntegrationError(CheckUsageError):
    """A library's object cannot be checked as asked (an unsupported setting, a missing dependency).

    The message says what to change.
    """


def relative_bias(report: CheckReport) -> float:
    """The size of a check's bias relative to the exact gradient: ``‖E[grad loss] + grad J‖ / ‖grad J‖``.

    Over every checked parameter element together. It needs the exact gradient of every element,
    which the report holds when autograd decided (``report.ground_truth == "autograd"``) or when
    central differences took every coordinate.

    Raises:
        IntegrationError: the report compared some tensor along a random direction only.

    >>> import torch
    >>> from reinforce_check import check_reinforce
    >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    >>> def episode():
    ...     dist = torch.distributions.Categorical(logits=theta)
    ...     action = dist.sample()
    ...     reward = action.double()
    ...     return reward, -dist.log_prob(action) * (reward - 0.5 * action)  # biased on purpose
    >>> round(relative_bias(check_reinforce(episode, {"theta": theta}, raise_exception=False)), 6)
    0.5
    """
    if any(p.reference.endswith("direction") for p in report.parameters):
        raise IntegrationError(
            "the report compared some parameters along a random direction only, so the full bias is not known; "
            "let autograd decide (probabilities that carry their gradient) or check fewer parameters."
        )
    target = torch.cat([p.target.reshape(-1) for p in report.parameters])
    estimate = torch.cat([p.estimate.reshape(-1) for p in report.parameters])
    norm = float(target.norm())
    difference = float((estimate - target).norm())
    if norm == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / norm


def rollout_return(rewards: Sequence[Any], dones: Sequence[Any], gamma: float | None = None) -> float:
    """The rewards of a rollout summed over its steps and environments, discounted from each episode's start.

    Arguments:
        rewards: one array per step, the reward of each environment (any shape, the same at every step).
        dones: one array per step, whether that step ended each environment's episode (the next
            step starts a new one, whose discount starts again at 1).
        gamma: the discount, applied as ``gamma ** k`` to a reward ``k`` steps after its episode
            began; ``None``: undiscounted.

    >>> rollout_return([[1.0], [1.0], [1.0]], [[False], [True], [False]], gamma=0.5)
    2.5
    """
    total = 0.0
    since_start = np.zeros(np.shape(rewards[0])) if len(rewards) else np.zeros(0)
    for reward, done in zip(rewards, dones):
        factor = 1.0 if gamma is None else gamma**since_start
        total += float(np.sum(factor * np.asarray(reward, dtype=np.float64)))
        since_start = np.where(np.asarray(done, dtype=bool), 0.0, since_start + 1.0)
    return total


def import_library(module: str, *, adapter: str, library: str) -> Any:
    """Import ``module`` for an adapter when it is called, or say how to install its library.

    Raises:
        IntegrationError: ``module`` cannot be imported.

    >>> import_library("reinforce_check_no_such_library", adapter="check_x", library="X")
    Traceback (most recent call last):
    ...
    reinforce_check.integrations.IntegrationError: check_x needs X (No module named 'reinforce_check_no_such_library'); install it with pip install 'reinforce-check[integrations]'.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise IntegrationError(
            f"{adapter} needs {library} ({error}); install it with pip install 'reinforce-check[integrations]'."
        ) from error
