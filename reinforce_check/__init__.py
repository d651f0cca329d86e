"""reinforce_check: exact gradient checking of REINFORCE implementations.

Runs an episode once for every terminating sequence of actions its categorical samplers can
produce, computes the exact objective J(theta) = sum_a p(a) objective(a), and checks that the
implementation's expected gradient equals -grad J, against autograd and finite differences.

>>> import torch
>>> from reinforce_check import check_reinforce
>>> theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
>>> def episode():
...     dist = torch.distributions.Categorical(logits=theta)
...     action = dist.sample()
...     reward = (action == 2).double()
...     return reward, -dist.log_prob(action) * reward
>>> check_reinforce(episode, {"theta": theta}).num_sequences
3

The public names are imported lazily, so that loading the pytest plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "check_reinforce": "check",
    "enumerate_actions": "handlers",
    "CheckReport": "report",
    "ParameterReport": "report",
    "DirectionalCheck": "report",
    "SequenceContribution": "report",
    "ReinforceCheckError": "report",
    "CheckUsageError": "errors",
    "EpisodeOutputError": "errors",
    "InvalidOptionError": "errors",
    "InvalidProbabilitiesError": "errors",
    "NoSamplerCallError": "errors",
    "NondeterministicEpisodeError": "errors",
    "ParameterError": "errors",
    "SequenceBudgetError": "errors",
    "UninterceptedRandomnessError": "errors",
    "BackwardCall": "training_step",
    "TrainingStep": "training_step",
    "TrainingStepError": "training_step",
    "capture_loss": "training_step",
    "step_loss": "training_step",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .check import check_reinforce
    from .handlers import enumerate_actions
    from .errors import (
        CheckUsageError,
        EpisodeOutputError,
        InvalidOptionError,
        InvalidProbabilitiesError,
        NondeterministicEpisodeError,
        NoSamplerCallError,
        ParameterError,
        SequenceBudgetError,
        UninterceptedRandomnessError,
    )
    from .report import CheckReport, DirectionalCheck, ParameterReport, ReinforceCheckError, SequenceContribution
    from .training_step import BackwardCall, TrainingStep, TrainingStepError, capture_loss, step_loss


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reinforce_check' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
