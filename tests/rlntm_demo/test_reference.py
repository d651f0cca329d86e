"""The fast step (:mod:`rlntm_demo.fast`) against the reference step that defines the model
(:mod:`rlntm_demo.reference`), in float64, for every controller and option.

The contract: run with the same weights and the same seed, the two draw the same decisions from
the same probabilities (every ``torch.multinomial`` call is recorded and compared, since that is
what an exact check differentiates), and give the same rollout: heads, predictions and mask
exactly, log-probabilities, rewards and baselines to relative 1e-10 (absolute 1e-12), and the same
gradient of every parameter to relative 1e-9 (absolute 1e-12), every output weighted differently
so that a gradient sent to the wrong step or decision shows. The fast step runs whichever loop is
built (C++ where it is; ``test_native.py`` compares the two fast loops).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlntm_demo import reference
from rlntm_demo.config import CONTROLLERS, ModelConfig
from rlntm_demo.model import RLNTM, Rollout
from rlntm_demo.tasks import Batch, make_task

EXACT = ("actions", "mask", "input_heads", "memory_heads", "output_positions", "predictions")
CLOSE = ("log_probs", "rewards", "baselines", "decision_probs")


def build(task_name: str, controller: str, step_impl: str = "fast", **options: object) -> tuple[RLNTM, Batch]:
    task = make_task(task_name, num_symbols=4)
    batch = task.sample(complexity=3, batch_size=5, generator=torch.Generator().manual_seed(1))
    config = ModelConfig(controller=controller, hidden_size=6, embedding_size=3, interfaces=task.interfaces,
                         init_std=0.5, inverse_temperature=1.0, initial_state=0.1, step_impl=step_impl,
                         **options)  # type: ignore[arg-type]
    model = RLNTM(config, generator=torch.Generator().manual_seed(1)).double()
    model.online_baseline.normal_(generator=torch.Generator().manual_seed(2))
    return model, batch


def run(model: RLNTM, batch: Batch, step_impl: str, monkeypatch: pytest.MonkeyPatch,
        **options: object) -> tuple[Rollout, list[torch.Tensor]]:
    """The rollout with ``step_impl``, seeded, and the probabilities of every multinomial call."""
    model.config = dataclasses.replace(model.config, step_impl=step_impl)
    original = torch.multinomial
    calls: list[torch.Tensor] = []

    def multinomial(input: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(input)
        return original(input, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch, torch.random.fork_rng():
        patch.setattr(torch, "multinomial", multinomial)
        torch.manual_seed(0)
        rollout = model.run_episode(batch, **options)  # type: ignore[arg-type]
    return rollout, calls


def gradients(model: RLNTM, rollout: Rollout, probs: list[torch.Tensor]) -> list[torch.Tensor]:
    values = [rollout.log_probs, rollout.rewards, rollout.baselines, rollout.decision_probs, *probs]
    total = torch.zeros((), dtype=torch.float64)
    for k, value in enumerate(values):
        weights = torch.linspace(0.5, 1.5 + k, value.numel(), dtype=torch.float64).view_as(value)
        total = total + (value * weights).sum()
    grads = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, model.parameters())]


def assert_equal_rollouts(model: RLNTM, batch: Batch, monkeypatch: pytest.MonkeyPatch, **options: object) -> Rollout:
    fast, fast_probs = run(model, batch, "fast", monkeypatch, **options)
    slow, slow_probs = run(model, batch, "reference", monkeypatch, **options)
    for name in EXACT:
        a, b = getattr(fast, name), getattr(slow, name)
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name
    for name in CLOSE:
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-10, atol=1e-12, msg=name)
    assert len(fast_probs) == len(slow_probs)
    for a, b in zip(fast_probs, slow_probs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg="probabilities handed to torch.multinomial")
    if torch.is_grad_enabled():
        for (name, _), a, b in zip(model.named_parameters(), gradients(model, fast, fast_probs),
                                   gradients(model, slow, slow_probs)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    return fast


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("task_name,options", [
    ("forward-reverse", {}),
    ("forward-reverse", {"baseline_hidden_size": 5}),
    ("forward-reverse", {"read_window": 1, "baseline": "none", "circular_input": True}),
    ("copy", {"read_window": 1}),
    ("reverse", {"read_window": 1, "baseline": "offline", "baseline_hidden_size": 4}),
    ("reverse", {"read_window": 1, "circular_input": True}),
    ("duplicated-input", {"read_window": 1, "baseline": "none"}),
    ("repeat-copy", {"read_window": 1, "baseline": "none"}),
    ("repeat-copy", {"circular_input": True, "baseline": "none"}),
    ("sort", {"read_window": 1, "baseline": "online"}),
    ("addition", {"baseline": "offline", "baseline_hidden_size": 5}),
    # Issue 19's options (the first two apply to direct access only; the others ignore them).
    ("forward-reverse", {"shortcut_scale": 5.0}),
    ("forward-reverse", {"read_window": 1, "adjacent_memory": "off", "shortcut_scale": 2.0}),
    ("forward-reverse", {"adjacent_memory": "closed", "input_start_marker": True}),
    ("reverse", {"read_window": 1, "shortcut_scale": 5.0, "input_start_marker": True}),
    ("repeat-copy", {"circular_input": True, "baseline": "none", "input_start_marker": True}),
    ("sort", {"adjacent_memory": "off", "baseline": "online"}),
    ("forward-reverse", {"memory_start_marker": True, "circular_input": True, "adjacent_memory": "off"}),
    ("addition", {"read_window": 1, "memory_start_marker": True, "baseline": "offline"}),
    # The authors' direct access (the window write; the Python loop whether or not C++ is built).
    ("forward-reverse", {"direct_access": "authors", "adjacent_memory": "off", "read_window": 2, "memory_cells": 5}),
    ("forward-reverse", {"direct_access": "authors", "adjacent_memory": "off", "read_window": 1, "shortcut_scale": 3.0,
                         "circular_input": True, "memory_start_marker": True}),
    ("forward-reverse", {"direct_access": "authors", "adjacent_memory": "off", "baseline": "online"}),
    ("repeat-copy", {"direct_access": "authors", "adjacent_memory": "off", "read_window": 1, "baseline": "offline",
                     "input_start_marker": True}),
    ("copy", {"direct_access": "authors", "adjacent_memory": "off", "read_window": 2, "shortcut_scale": 2.0}),
])
def test_the_fast_step_equals_the_reference(task_name: str, options: dict[str, object], controller: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = build(task_name, controller, **options)
    rollout = assert_equal_rollouts(model, batch, monkeypatch, all_steps=True)
    assert rollout.mask.shape[1] == int(batch.steps.max()) + bool(options.get("input_start_marker"))


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("options", [{}, {"greedy": True}, {"greedy": True, "memory_cells": 9}])
def test_the_fast_step_equals_the_reference_stopping_early_greedy_and_on_a_larger_tape(
    options: dict[str, object], controller: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, batch = build("forward-reverse", controller, read_window=1)
    rollout = assert_equal_rollouts(model, batch, monkeypatch, **options)
    if "memory_cells" in options:
        assert rollout.memory_heads is not None and int(rollout.memory_heads.max()) < 9


def test_the_fast_step_equals_the_reference_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = build("repeat-copy", "direct", read_window=1)
    with torch.no_grad():
        rollout = assert_equal_rollouts(model, batch, monkeypatch, greedy=True)
    assert not rollout.rewards.requires_grad


def test_a_replay_takes_the_given_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = build("forward-reverse", "direct", read_window=1)
    played, _ = run(model, batch, "fast", monkeypatch, all_steps=True)
    replayed = reference.run_episode(model, batch, actions=played.actions)
    assert torch.equal(replayed.actions, played.actions)
    torch.testing.assert_close(replayed.log_probs, played.log_probs, rtol=1e-10, atol=1e-12)


def test_step_impl_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown step_impl 'slow'; choose one of: fast, reference"):
        ModelConfig(step_impl="slow")


def test_training_with_the_reference_step_follows_the_fast_run_up_to_rounding() -> None:
    """Three seeded updates of the ``fast`` preset (float32, Adam): the same decisions, so the
    same curriculum and errors, and losses and weights that differ by rounding only."""
    from rlntm_demo.presets import make_config
    from rlntm_demo.training import Trainer

    runs = []
    for step_impl in ("fast", "reference"):
        trainer = Trainer(make_config("forward-reverse", "direct", "fast", seed=2, overrides=[
            "batch_size=16", "rollouts_per_input=4", f'model.step_impl="{step_impl}"']))
        runs.append(([trainer.step() for _ in range(3)], dict(trainer.model.named_parameters())))
    (fast_metrics, fast_weights), (reference_metrics, reference_weights) = runs
    for fast, slow in zip(fast_metrics, reference_metrics):
        assert (fast["level"], fast["error"]) == (slow["level"], slow["error"])
        assert fast["loss"] == pytest.approx(slow["loss"], rel=1e-4, abs=1e-5)
    # Adam divides each coordinate's gradient by its own scale, so a coordinate whose gradient is
    # at rounding level can move by a fraction of the learning rate (5e-3) in one path and not
    # the other: with the shortcut scale of the fast preset, one weight of 17,500 moves 2.1e-5
    # apart. 5e-5 (1% of one step) allows that and still shows a wrong gradient, which moves
    # many coordinates by whole steps.
    for name, weight in fast_weights.items():
        torch.testing.assert_close(reference_weights[name], weight, rtol=1e-4, atol=5e-5, msg=name)


def test_the_memory_start_marker_puts_ones_under_the_head_at_the_first_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The authors' initial memory: the first memory window the controller reads holds ones in its
    centre cell (the head's) and zeros beside it; without the marker, zeros throughout. The fast
    step equals the reference with the marker (the parametrized test above)."""
    windows: dict[bool, torch.Tensor] = {}
    for marker in (True, False):
        model, batch = build("forward-reverse", "lstm", step_impl="reference", read_window=1, memory_start_marker=marker)
        original = model.controller.encode

        def encode(input_window: torch.Tensor, memory_window: torch.Tensor | None, previous: torch.Tensor,
                   marker: bool = marker, original=original) -> torch.Tensor:  # type: ignore[no-untyped-def]
            assert memory_window is not None
            windows.setdefault(marker, memory_window.detach().clone())
            return original(input_window, memory_window, previous)

        monkeypatch.setattr(model.controller, "encode", encode)
        model.run_episode(batch)
    first = windows[True]
    assert first.shape == (5, 3, model.config.memory_width)
    assert bool((first[:, 1] == 1).all()) and bool((first[:, [0, 2]] == 0).all())
    assert bool((windows[False] == 0).all())
