"""``enumerate_actions``: say which code's draws a check enumerates.

By default a check enumerates every categorical draw an episode makes. When the episode runs code
marked with :func:`enumerate_actions` (a decorated function, method, module or class, or a
``with enumerate_actions():`` block), the check switches to *scoped mode*: only draws made inside
marked code are enumerated. Every other draw, a sampler call or any other random number (an
environment's own randomness, say), samples for real, from the generator state the check started
with, restored before every run, so each action sequence sees the same random numbers and the
episode stays a deterministic function of the enumerated actions. The report says so.

During a check, marked code records its graph through ``torch.no_grad()`` and its kin
(:mod:`~reinforce_check.recording`), so that autograd's exact -grad J decides for PPO-style
rollouts. Outside a check, marked code behaves exactly as before: the wrapper draws nothing,
changes no generator state and records nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, overload

import torch

from . import recording, scope

__all__ = ["enumerate_actions"]

T = TypeVar("T")


class _Scope:
    """Context manager and decorator marking code whose draws a check enumerates."""

    def __init__(self) -> None:
        # What each entry (innermost last) began recording, if anything.
        self._recordings: list[recording.Recording | None] = []

    def __enter__(self) -> _Scope:
        scope.enter_scope()
        try:
            self._recordings.append(recording.begin())
        except BaseException:
            scope.exit_scope()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        started = self._recordings.pop()
        try:
            if started is not None:
                recording.end(started)
        finally:
            if exc_type is not scope.ScopeDetected:
                scope.exit_scope()

    def __call__(self, target: T) -> T:
        return enumerate_actions(target)


def _wrap_function(function: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(function, "__reinforce_check_scoped__", False):
        return function

    @functools.wraps(function)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        with _Scope():
            return function(*args, **kwargs)

    scoped.__reinforce_check_scoped__ = True  # type: ignore[attr-defined]
    return scoped


def _wrap_class(cls: type) -> type:
    for name, member in list(vars(cls).items()):
        if name.startswith("__") and name != "__call__":
            continue
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(member, staticmethod):
            setattr(cls, name, staticmethod(_wrap_function(member.__func__)))
        elif isinstance(member, classmethod):
            setattr(cls, name, classmethod(_wrap_function(member.__func__)))
        elif inspect.isfunction(member):
            setattr(cls, name, _wrap_function(member))
    return cls


@overload
def enumerate_actions(target: None = None) -> _Scope: ...


@overload
def enumerate_actions(target: T) -> T: ...


def enumerate_actions(target: Any = None) -> Any:
    """Mark code whose categorical draws a check enumerates; every other draw is replayed.

    Works on a function or method (returns a wrapper), on an ``nn.Module`` instance (wraps its
    ``forward`` in place and returns the module), on a class (wraps its public methods, ``forward``
    and ``__call__`` included) and, called with no argument, as a context manager. A third-party
    policy needs no edit to its source: ``policy.act = enumerate_actions(policy.act)``.

    Inside :func:`~reinforce_check.check_reinforce`, as soon as marked code runs, only draws made
    inside marked code are enumerated. Other sampler calls and random draws sample for real from the
    generator state the check started with, restored before every run, so that each enumerated
    sequence sees the same random numbers; the report notes how many such draws there were. Outside
    a check the marked code behaves exactly as before.

    During a check, marked code also records its graph where gradient recording would be off:
    ``torch.no_grad()`` and ``torch.set_grad_enabled(False)`` inside it, as a decorator on it
    (``generate()`` in ``transformers``), or around its call (a PPO rollout). The probabilities
    reaching the sampler keep their dependence on the parameters, so autograd's exact -grad J
    decides, while the code and its caller get the values, ``requires_grad`` and grad mode they get
    outside a check (tensors made without gradient come detached). ``torch.inference_mode()``
    cannot be recorded. The documentation's page on ``enumerate_actions`` says how, what it costs,
    and its limits.

    Arguments:
        target: what to mark; ``None`` returns a context manager.

    >>> import torch
    >>> from reinforce_check import check_reinforce, enumerate_actions
    >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    >>> @enumerate_actions
    ... def act():
    ...     dist = torch.distributions.Categorical(logits=theta)
    ...     action = dist.sample()
    ...     return action, dist.log_prob(action)
    >>> def episode():
    ...     action, log_prob = act()
    ...     noise = torch.rand(()).double()  # the environment's own randomness, replayed
    ...     reward = action.double() + noise
    ...     return reward, -log_prob * reward
    >>> check_reinforce(episode, {"theta": theta}).num_sequences
    2
    """
    if target is None:
        return _Scope()
    if isinstance(target, torch.nn.Module):
        target.forward = _wrap_function(target.forward)  # type: ignore[method-assign]
        return target
    if inspect.isclass(target):
        return _wrap_class(target)
    if callable(target):
        return _wrap_function(target)
    raise TypeError(
        f"enumerate_actions() takes a function, a method, an nn.Module, a class, or nothing (for a "
        f"`with enumerate_actions():` block); got {type(target).__name__}."
    )
