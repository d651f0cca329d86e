"""Detection of random draws that bypass the intercepted samplers.

The enumeration assumes that, given its actions, an episode is deterministic. A draw from a global
random number generator outside the intercepted samplers (a Gumbel-max trick with ``torch.rand``,
dropout, an environment using Python's :mod:`random`) breaks that silently. The chooser itself never
draws, so any change of a global generator's state during an episode is such a draw.

Generators held privately (a ``torch.Generator`` or ``numpy.random.Generator`` object the episode
creates itself) cannot be watched; they are deterministic if they are created with a fixed seed
inside the episode. (The ``choice`` of numpy generators made during a check is a sampler the check
intercepts: :mod:`reinforce_check.numpy_samplers`.)

To say *where* a draw came from, :func:`watch` also wraps the common Python-level draw functions
for its duration (torch's ``rand``/``randn``/``randint``/``randperm``/``normal`` and their ``_like``
forms, ``Tensor.uniform_``/``normal_``/... as ``torch.nn.init`` uses them, ``numpy.random``'s module
functions, :mod:`random`'s): each records the first few places, outside torch, numpy, :mod:`random`
and this package, that called it without a private generator. Draws that never pass through these
Python functions (dropout, draws inside compiled code, a function imported by name before the check
started) are still detected by the state comparison, without a place.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import CheckUsageError, UninterceptedRandomnessError
from .patching import describe_entry_points, restore_attributes, save_attributes

__all__ = ["RandomState", "capture", "moved_since", "restore", "verify_unchanged", "watch"]


@dataclass(frozen=True)
class RandomState:
    """Snapshot of the global generators an episode might draw from."""

    torch_cpu: torch.Tensor
    torch_cuda: tuple[torch.Tensor, ...]
    python: Any
    numpy: Any


def capture() -> RandomState:
    """Snapshot torch's CPU (and initialized CUDA) generators, Python's and numpy's global ones.

    >>> state = capture()
    >>> verify_unchanged(state)  # nothing was drawn in between
    """
    cuda: tuple[torch.Tensor, ...] = ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = tuple(torch.cuda.get_rng_state_all())
    return RandomState(torch.get_rng_state(), cuda, random.getstate(), np.random.get_state())


def restore(state: RandomState) -> None:
    """Put every global generator back to ``state``.

    >>> state = capture()
    >>> first = torch.rand(1)
    >>> restore(state)
    >>> bool(torch.rand(1) == first)
    True
    """
    torch.set_rng_state(state.torch_cpu)
    if state.torch_cuda:
        torch.cuda.set_rng_state_all(list(state.torch_cuda))
    random.setstate(state.python)
    np.random.set_state(state.numpy)


def moved_since(before: RandomState) -> list[str]:
    """The global generators whose state changed since ``before``, described for a message.

    >>> state = capture()
    >>> moved_since(state)
    []
    """
    after = capture()
    moved = []
    if not torch.equal(before.torch_cpu, after.torch_cpu):
        moved.append("torch's global generator (torch.rand, torch.randn, dropout, Tensor.uniform_, ...)")
    if len(before.torch_cuda) != len(after.torch_cuda) or any(
        not torch.equal(a, b) for a, b in zip(before.torch_cuda, after.torch_cuda)
    ):
        moved.append("torch's CUDA generators")
    if before.python != after.python:
        moved.append("Python's random module")
    if not _numpy_equal(before.numpy, after.numpy):
        moved.append("numpy's global generator (np.random.*)")
    return moved


def verify_unchanged(
    before: RandomState, cause: BaseException | None = None, places: list[tuple[str, str, int]] | None = None
) -> None:
    """Raise :class:`UninterceptedRandomnessError` if a global generator moved since ``before``.

    Arguments:
        before: the snapshot to compare with.
        cause: an error to chain (the one the moved generator likely caused).
        places: ``(function, file, line)`` of draws seen, for the message.
    """
    moved = moved_since(before)
    if moved:
        where = ""
        if places:
            where = " Drawn by " + "; ".join(f"{name} at {file}:{line}" for name, file, line in places) + "."
        raise UninterceptedRandomnessError(
            "random numbers were drawn during the episode outside the intercepted samplers, from "
            + " and ".join(moved)
            + "."
            + where
            + f" The check enumerates only the draws of {describe_entry_points()}; any other randomness makes "
            "the enumerated probabilities wrong. Sample actions through those entry points (not a Gumbel-max "
            "trick), switch off dropout (model.eval()), and give the environment a generator seeded inside "
            "the episode. To check a policy inside a trainer step that shuffles minibatches "
            "(np.random.permutation, torch.randperm) or initialises networks, mark the policy's sampling "
            "with reinforce_check.enumerate_actions (a decorator, or a with block): only the draws inside "
            "it are enumerated, and every other draw is replayed from the same generator state for every "
            "sequence."
        ) from cause


def _numpy_equal(a: Any, b: Any) -> bool:
    return bool(a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:]))


@contextlib.contextmanager
def watch(before: RandomState | None = None) -> Iterator[None]:
    """Raise :class:`UninterceptedRandomnessError` if the block draws from a global generator.

    The state is compared once, when the block ends, rather than around every episode run: a
    snapshot costs about as much as a small episode step. Another usage error raised inside (a replay
    that differs, a runaway enumeration) is replaced by the randomness error when a generator moved,
    since that is then the likelier cause and the more useful message.

    Arguments:
        before: a snapshot just taken, to compare with instead of taking another.

    >>> with watch():
    ...     pass
    """
    if before is None:
        before = capture()
    with _recording_draws() as places:
        try:
            yield
        except UninterceptedRandomnessError:
            raise
        except CheckUsageError as error:
            verify_unchanged(before, cause=error, places=places)
            raise
        verify_unchanged(before, places=places)


@functools.lru_cache(maxsize=1)
def _draw_functions() -> list[tuple[Any, str, str]]:
    """``(owner, attribute, name for the message)`` of the Python-level draw functions wrapped
    (found once: which of them the installed torch, numpy and Python have does not change)."""
    found = []
    for name in ("rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal", "poisson"):
        found.append((torch, name, f"torch.{name}"))
    for name in ("uniform_", "normal_", "random_", "exponential_", "geometric_", "log_normal_", "cauchy_", "bernoulli_"):
        found.append((torch.Tensor, name, f"Tensor.{name}"))
    for name in (
        "permutation", "shuffle", "rand", "randn", "randint", "random", "random_sample", "choice", "normal", "uniform",
        "binomial", "poisson", "exponential",
    ):
        found.append((np.random, name, f"np.random.{name}"))
    for name in ("random", "randint", "randrange", "shuffle", "choice", "choices", "sample", "uniform", "gauss", "getrandbits"):
        found.append((random, name, f"random.{name}"))
    return [(owner, attr, label) for owner, attr, label in found if hasattr(owner, attr)]


_LIBRARIES = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (torch.__file__, np.__file__, __file__)
) + (os.path.abspath(random.__file__),)
_MAX_PLACES = 3


class _Recorder(threading.local):
    """The places of draws seen while :func:`_recording_draws` is active."""

    def __init__(self) -> None:
        self.places: list[tuple[str, str, int]] | None = None


_RECORDER = _Recorder()


def _caller() -> tuple[str, int] | None:
    """File and line of the innermost frame outside torch, numpy, :mod:`random` and this package."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_LIBRARIES):
            return filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


_RECORDERS: dict[tuple[Any, str], Callable[..., Any]] = {}


def _recorded(original: Callable[..., Any], label: str) -> Callable[..., Any]:
    """``original`` wrapped to record its callers; one wrapper per function, kept, so that the
    sampler interception, which builds its replacement of ``np.random.choice`` or ``random.choices``
    once per function it finds installed, finds the same wrapper in every check."""
    key = (original, label)
    if key not in _RECORDERS:
        _RECORDERS[key] = _recorder(original, label)
    return _RECORDERS[key]


def _recorder(original: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def draw(*args: Any, **kwargs: Any) -> Any:
        places = _RECORDER.places
        if places is not None and len(places) < _MAX_PLACES and kwargs.get("generator") is None:
            caller = _caller()
            if caller is not None and (label, *caller) not in places:
                places.append((label, *caller))
        return original(*args, **kwargs)

    return draw


@contextlib.contextmanager
def _recording_draws() -> Iterator[list[tuple[str, str, int]]]:
    """Wrap the draw functions for the block (re-entrant: an inner block shares the outer's places)."""
    if _RECORDER.places is not None:
        yield _RECORDER.places
        return
    functions = _draw_functions()
    saved = save_attributes((owner, attr) for owner, attr, _ in functions)
    places: list[tuple[str, str, int]] = []
    try:
        for owner, attr, label in functions:
            setattr(owner, attr, _recorded(getattr(owner, attr), label))
        _RECORDER.places = places
        yield places
    finally:
        _RECORDER.places = None
        restore_attributes(saved)
