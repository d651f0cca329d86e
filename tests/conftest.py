"""Shared fixtures for the reinforce_check test suite."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch

# When a property test fails, Hypothesis's pytest plugin imports its patch writer (and with it
# libcst), whose import emits a third-party DeprecationWarning; with ``filterwarnings = error`` that
# becomes an INTERNALERROR that hides the falsifying example. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        importlib.import_module("hypothesis.extra._patching")
    except ImportError:  # Hypothesis without its optional patching support: nothing to preload
        pass


@pytest.fixture
def float64_default() -> Iterator[None]:
    """Make float64 torch's default dtype for the test (modules, ``torch.tensor`` of floats), then restore it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one intra-op thread, then restore the setting.

    Tests made of thousands of tiny tensor operations gain nothing from more threads, and on a
    machine whose cores are busy with other work extra threads slow them by an order of magnitude.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def make_param() -> Callable[..., torch.Tensor]:
    """Factory of seeded float64 leaf tensors that require grad: ``make_param(*shape, seed=0, scale=1.0)``.

    Draws from a private generator, so torch's global generator is left alone.
    """

    def make(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
        return values.requires_grad_()

    return make


@pytest.fixture(params=[False, True], ids=["sequential", "batched"])
def batched(request: pytest.FixtureRequest) -> bool:
    """Run the test once with sequential enumeration and once with batched enumeration."""
    return bool(request.param)


@pytest.fixture
def in_mode(batched: bool) -> Callable[[Callable[[int], tuple[torch.Tensor, torch.Tensor]]], Callable[..., object]]:
    """Adapt an ``episode(batch_size)`` returning ``(batch_size,)`` tensors to the mode under test.

    Batched: the episode itself. Sequential: ``episode()`` running one row and returning scalars.
    """

    def adapt(batch_episode: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> Callable[..., object]:
        if batched:
            return batch_episode

        def episode() -> tuple[torch.Tensor, torch.Tensor]:
            objective, loss = batch_episode(1)
            return objective[0], loss[0]

        return episode

    return adapt
