"""The scope marker: where code marked with ``enumerate_actions`` begins and ends during a check.

A check that intercepts every sampler (unscoped) learns from :class:`ScopeDetected` that the episode
marks its policy, and starts again in scoped mode, where only draws inside marked code are
enumerated. Draws outside it sample for real; :class:`OutsideDraws` counts them for the pass that
made them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

__all__ = ["OutsideDraws", "ScopeDetected", "activate", "deactivate", "enter_scope", "exit_scope", "inside", "records", "run"]


class ScopeDetected(BaseException):
    """Raised when marked code runs during a check that enumerates every sampler.

    A BaseException, so that an episode's own ``except Exception`` cannot swallow it: the check
    starts again in scoped mode.
    """


@dataclass
class OutsideDraws:
    """Sampler calls of a scoped pass made outside marked code (sampled for real).

    >>> draws = OutsideDraws()
    >>> draws.count(requires_grad=True); (draws.calls, draws.with_grad)
    (1, 1)
    """

    calls: int = 0
    with_grad: int = 0
    """Of those, calls whose probabilities depend on parameters (J would depend on them too)."""

    def count(self, *, requires_grad: bool) -> None:
        self.calls += 1
        self.with_grad += int(requires_grad)


class _Marker(threading.local):
    def __init__(self) -> None:
        # None: no check is intercepting; False: a check enumerates every draw; True: scoped.
        self.scoped: bool | None = None
        self.depth = 0
        # Whether marked functions record their graph through gradient-off regions: a scoped check
        # whose episode run started with gradient recording on (not the check's own runs under no_grad).
        self.record = False
        # Counts the runs a check starts: what marked code records belongs to one run.
        self.run = 0


_MARKER = _Marker()


def activate(*, scoped: bool) -> None:
    """A check starts intercepting (called by :func:`~reinforce_check.patching.intercept_samplers`)."""
    _MARKER.scoped = scoped
    _MARKER.depth = 0
    _MARKER.record = scoped and torch.is_grad_enabled()
    _MARKER.run += 1


def deactivate() -> None:
    """The check stops intercepting."""
    _MARKER.scoped = None
    _MARKER.depth = 0
    _MARKER.record = False


def enter_scope() -> None:
    """Mark the start of code whose draws are enumerated.

    Raises:
        ScopeDetected: a check that enumerates every draw is running.
    """
    if _MARKER.scoped is False:
        raise ScopeDetected
    _MARKER.depth += 1


def exit_scope() -> None:
    """Mark the end of code whose draws are enumerated."""
    _MARKER.depth = max(_MARKER.depth - 1, 0)


def records() -> bool:
    """Whether marked functions run now record their graph (see :mod:`~reinforce_check.recording`)."""
    return _MARKER.record


def run() -> int:
    """Which episode run of a check this is (a number that changes with every run)."""
    return _MARKER.run


def inside() -> bool:
    """Whether a draw made now is inside marked code."""
    return _MARKER.depth > 0
