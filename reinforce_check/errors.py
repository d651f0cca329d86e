"""Errors raised when a check cannot be carried out as asked.

A *mismatch* (the implementation's expected gradient differs from the exact one) is
:class:`~reinforce_check.ReinforceCheckError`, defined in :mod:`reinforce_check.report`.
Everything here is *misuse*: the check could not be run faithfully, and the message says
what to change. Each error is its own class so that tests and tools can tell them apart;
all derive from :class:`CheckUsageError`.
"""

from __future__ import annotations

__all__ = [
    "CheckUsageError",
    "EpisodeOutputError",
    "InvalidOptionError",
    "InvalidProbabilitiesError",
    "NoSamplerCallError",
    "NondeterministicEpisodeError",
    "ParameterError",
    "SequenceBudgetError",
    "UninterceptedRandomnessError",
]


class CheckUsageError(Exception):
    """Base class of every error that means "the check cannot be run this way".

    >>> issubclass(NoSamplerCallError, CheckUsageError)
    True
    """


class NoSamplerCallError(CheckUsageError):
    """The episode finished without calling any intercepted sampler.

    Nothing was enumerated, so a pass would be meaningless (the failure Pyro users meet when
    an enumeration annotation is forgotten).
    """


class NondeterministicEpisodeError(CheckUsageError):
    """Replaying the same action prefix produced different probabilities or control flow."""


class UninterceptedRandomnessError(CheckUsageError):
    """Random numbers were drawn during the episode outside the intercepted samplers."""


class InvalidProbabilitiesError(CheckUsageError):
    """A sampler received NaN, infinite, negative or all-zero probabilities."""


class SequenceBudgetError(CheckUsageError):
    """The enumeration found more action sequences than ``max_sequences`` allows."""


class EpisodeOutputError(CheckUsageError):
    """The episode did not return ``(objective, loss)`` of the required shape."""


class ParameterError(CheckUsageError):
    """A checked parameter cannot be checked (no grad, wrong dtype, not a leaf, repeated)."""


class InvalidOptionError(CheckUsageError, ValueError):
    """An option of the check has an invalid value (a negative tolerance, an unknown mode)."""
