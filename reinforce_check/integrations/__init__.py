"""Adapters that check the policy gradients of RL libraries on their own objects.

Each adapter lives in its own module and imports its library only when called, so that
``import reinforce_check.integrations`` costs nothing and needs none of them:

* :mod:`reinforce_check.integrations.sb3`: Stable-Baselines3's A2C and PPO
  (:func:`~reinforce_check.integrations.sb3.check_sb3`);
* :mod:`reinforce_check.integrations.trl`: TRL's ``GRPOTrainer``
  (:func:`~reinforce_check.integrations.trl.check_grpo`) and ``RLOOTrainer``
  (:func:`~reinforce_check.integrations.trl.check_rloo`).

Code that builds its loss inside its own training step and is not covered here is checked with
:func:`~reinforce_check.capture_loss` (see :doc:`/integrations/training-step`).

>>> from reinforce_check.integrations import IntegrationError
>>> from reinforce_check import CheckUsageError
>>> issubclass(IntegrationError, CheckUsageError)
True
"""

from __future__ import annotations

import torch

from ..errors import CheckUsageError
from ..report import CheckReport

__all__ = ["IntegrationError", "relative_bias"]


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
