"""Detection of random draws that bypass the intercepted samplers.

The enumeration assumes that, given its actions, an episode is deterministic. A draw from a global
random number generator outside the intercepted samplers (a Gumbel-max trick with ``torch.rand``,
dropout, an environment using Python's :mod:`random`) breaks that silently. The chooser itself never
draws, so any change of a global generator's state during an episode is such a draw.

Generators held privately (a ``torch.Generator`` or ``numpy.random.Generator`` object the episode
creates itself) cannot be watched; they are deterministic if they are created with a fixed seed
inside the episode.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import CheckUsageError, UninterceptedRandomnessError

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


def verify_unchanged(before: RandomState, cause: BaseException | None = None) -> None:
    """Raise :class:`UninterceptedRandomnessError` if a global generator moved since ``before``."""
    moved = moved_since(before)
    if moved:
        raise UninterceptedRandomnessError(
            "random numbers were drawn during the episode outside the intercepted samplers, from "
            + " and ".join(moved)
            + ". The check enumerates only torch.multinomial, Tensor.multinomial, torch.bernoulli and the "
            "sample() of Categorical, OneHotCategorical and Bernoulli; any other randomness makes the "
            "enumerated probabilities wrong. Sample actions through those entry points (not a Gumbel-max "
            "trick), switch off dropout (model.eval()), and give the environment a generator seeded inside "
            "the episode."
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
    try:
        yield
    except UninterceptedRandomnessError:
        raise
    except CheckUsageError as error:
        verify_unchanged(before, cause=error)
        raise
    verify_unchanged(before)
