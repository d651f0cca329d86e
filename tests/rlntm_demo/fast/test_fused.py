"""The fused step loop's custom autograd functions (:mod:`rlntm_demo.fast.fused`): what the exact
check needs of them beyond equal values and gradients, which ``test_reference.py`` holds against
the reference step (every controller and option, float64). The model runs whichever loop is
built (the C++ one where it is; ``test_native.py`` checks that both give the same).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from rlntm_demo.fast import fused, native
from rlntm_demo.config import ModelConfig
from rlntm_demo.model import RLNTM
from rlntm_demo.objective import episode_losses
from rlntm_demo.tasks import Batch, make_task


def build(task_name: str, controller: str, **options: object) -> tuple[RLNTM, Batch]:
    task = make_task(task_name, num_symbols=4)
    batch = task.sample(complexity=3, batch_size=5, generator=torch.Generator().manual_seed(1))
    config = ModelConfig(controller=controller, hidden_size=6, embedding_size=3, interfaces=task.interfaces,
                         init_std=0.5, inverse_temperature=1.0, initial_state=0.1, **options)  # type: ignore[arg-type]
    model = RLNTM(config, generator=torch.Generator().manual_seed(1)).double()
    model.online_baseline.normal_(generator=torch.Generator().manual_seed(2))
    return model, batch


@pytest.fixture
def sampled_probs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.Tensor]]:
    """Records the probabilities of every ``torch.multinomial`` call (and samples as usual)."""
    original = torch.multinomial
    calls: list[torch.Tensor] = []

    def multinomial(input: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(input)
        return original(input, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "multinomial", multinomial)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield calls


def test_only_the_probabilities_differentiated(sampled_probs: list[torch.Tensor]) -> None:
    """A backward pass that starts from the sampled probabilities alone (as the exact check's
    first pass may) reaches the weights, and a second pass on the same graph gives the same."""
    model, batch = build("forward-reverse", "direct")
    model.run_episode(batch, all_steps=True)
    total = torch.stack([(p * torch.arange(p.numel(), dtype=p.dtype).view_as(p)).sum() for p in sampled_probs]).sum()
    params = list(model.controller.parameters())
    first = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(total, params, allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in first)
    for a, b in zip(first, second):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_grad_episode_saves_nothing() -> None:
    model, batch = build("copy", "lstm")
    with torch.no_grad():
        rollout = model.run_episode(batch)
    assert not rollout.rewards.requires_grad
    episode = fused.Episode(size=2, dtype=torch.float64, units=0, controller_units=0, decisions=2, window=0,
                            memory_cells=0, width=0, direct=False, grad=False)
    assert episode.token_size == 0 and episode.saved == []


def test_an_episode_is_freed_with_its_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing keeps an episode's saved values alive once its rollout and losses are gone (a
    reference cycle through a step's output once leaked about 10 MB per training update). The
    Python loop here; ``test_native.py`` checks the C++ one."""
    episodes: list[weakref.ref[fused.Episode]] = []
    monkeypatch.setattr(native, "extension", lambda: None)

    class Recorded(fused.Episode):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            episodes.append(weakref.ref(self))

    monkeypatch.setattr(fused, "Episode", Recorded)
    model, batch = build("forward-reverse", "direct")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        rollout = model.run_episode(batch)
    episode_losses(rollout).total.sum().backward()
    assert len(episodes) == 1 and episodes[0]() is not None and episodes[0]().saved  # type: ignore[union-attr]
    del rollout
    assert episodes[0]() is None
