"""The native step loop (:mod:`rlntm_demo.fast.native`) against the Python one it mirrors.

The C++ loop computes the same quantities with its own elementwise loops, so the two agree up to
rounding: a seeded rollout draws the same actions, and its values and gradients agree to relative
1e-10 (absolute 1e-12) in float64. In float32 the tolerance is relative 1e-3, absolute 1e-4 times
(1 + the tensor's largest magnitude): a weight's gradient sums over steps and rows, in an order
that differs between the loops, and a small entry among large ones keeps their rounding error; the
float64 cases carry the precision. Whichever loop is
built is also compared with plain autograd in ``test_fused.py``. These tests need the
extension built (a C++ compiler and ninja): where it cannot be, its RuntimeWarning fails them
(``filterwarnings = error``), which says what failed; ``RLNTM_NATIVE=0`` skips them. How it is
built is tested in ``test_native_build.py``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator

import pytest
import torch

from rlntm_demo.fast import fused, native
from rlntm_demo.config import CONTROLLERS, NUM_SYMBOLS, ModelConfig
from rlntm_demo.controllers import OfflineBaseline
from rlntm_demo.model import RLNTM, Rollout
from rlntm_demo.objective import episode_losses
from rlntm_demo.tasks import make_task

pytestmark = pytest.mark.skipif(os.environ.get(native.SWITCH) == "0", reason=f"{native.SWITCH}=0 turns the native loop off")

FIELDS = ("actions", "log_probs", "rewards", "mask", "baselines", "input_heads", "memory_heads", "output_positions", "predictions")


class BaselineAfterEpisode(RLNTM):
    fuses_baseline = False


@pytest.fixture
def fresh_extension() -> Iterator[None]:
    """Forget which loop was chosen, before and after the test."""
    native.extension.cache_clear()
    yield
    native.extension.cache_clear()


def run(use_native: bool, monkeypatch: pytest.MonkeyPatch, task_name: str, controller: str, dtype: torch.dtype,
        **options: object) -> tuple[Rollout, list[tuple[str, torch.Tensor]]]:
    monkeypatch.setenv(native.SWITCH, "1" if use_native else "0")
    native.extension.cache_clear()
    task = make_task(task_name, num_symbols=5)
    batch = task.sample(complexity=4, batch_size=7, generator=torch.Generator().manual_seed(3))
    cls = BaselineAfterEpisode if options.pop("baseline_after_episode", False) else RLNTM
    config = ModelConfig(controller=controller, hidden_size=8, embedding_size=4, interfaces=task.interfaces,
                         init_std=0.5, inverse_temperature=1.0, initial_state=0.1, **options)  # type: ignore[arg-type]
    model = cls(config, generator=torch.Generator().manual_seed(4)).to(dtype)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        rollout = model.run_episode(batch)
    episode_losses(rollout).total.sum().backward()
    return rollout, [(name, torch.zeros_like(p) if p.grad is None else p.grad) for name, p in model.named_parameters()]


@pytest.mark.usefixtures("fresh_extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("task_name,options", [
    ("forward-reverse", {}),
    ("repeat-copy", {"read_window": 1}),
    ("copy", {"baseline": "offline"}),
    ("reverse", {"baseline": "none", "read_window": 1}),
    ("forward-reverse", {"baseline_after_episode": True}),  # keeps the memory windows read
    ("forward-reverse", {"read_window": 1, "memory_start_marker": True}),
])
def test_native_loop_matches_the_python_loop(
    task_name: str, options: dict[str, object], controller: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    python_rollout, python_grads = run(False, monkeypatch, task_name, controller, dtype, **options)
    native_rollout, native_grads = run(True, monkeypatch, task_name, controller, dtype, **options)
    assert native.extension() is not None

    def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
        actual, expected = actual.detach(), expected.detach()
        if dtype == torch.float64 or not expected.is_floating_point():
            rtol, atol = 1e-10, 1e-12
        else:
            rtol, atol = 1e-3, 1e-4 * (1 + float(expected.nan_to_num(posinf=0, neginf=0).abs().max()))
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=name)

    for name in FIELDS:
        a, b = getattr(python_rollout, name), getattr(native_rollout, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(b, a, name)
    for (name, a), (_, b) in zip(python_grads, native_grads):
        assert_close(b, a, name)


@pytest.mark.usefixtures("fresh_extension")
def test_the_switch_turns_the_native_loop_off(monkeypatch: pytest.MonkeyPatch) -> None:
    options = dict(size=2, dtype=torch.float32, units=0, controller_units=0, decisions=2, window=0,
                   memory_cells=0, width=0, direct=False, grad=False, want_windows=False)
    assert not isinstance(fused.new_episode(**options), fused.Episode)
    monkeypatch.setenv(native.SWITCH, "0")
    native.extension.cache_clear()
    assert native.extension() is None
    assert isinstance(fused.new_episode(**options), fused.Episode)


@pytest.mark.usefixtures("fresh_extension")
def test_the_window_write_runs_the_python_loop_even_where_the_native_one_is_built() -> None:
    options = dict(size=2, dtype=torch.float32, units=0, controller_units=0, decisions=3, window=1,
                   memory_cells=3, width=4, direct=False, grad=False, want_windows=False)
    assert not isinstance(fused.new_episode(**options), fused.Episode)
    episode = fused.new_episode(**options, window_write=True)
    assert isinstance(episode, fused.Episode) and episode.window_write
    with pytest.raises(ValueError, match="memory_cells must be at least 3, not 2"):
        fused.new_episode(**{**options, "memory_cells": 2}, window_write=True)


@pytest.mark.usefixtures("fresh_extension")
def test_a_native_episode_is_freed_with_its_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for the Python loop (``test_fused.py``): no reference cycle through a step's output."""
    episodes: list[weakref.ref[object]] = []
    original = fused.new_episode

    def recorded(**options: object) -> object:
        episode = original(**options)
        episodes.append(weakref.ref(episode))
        return episode

    monkeypatch.setattr(fused, "new_episode", recorded)
    rollout, _ = run(True, monkeypatch, "forward-reverse", "direct", torch.float32)
    assert len(episodes) == 1 and not isinstance(episodes[0](), fused.Episode)
    del rollout
    assert episodes[0]() is None


@pytest.mark.usefixtures("fresh_extension")
def test_native_pre_reader_matches_the_torch_lstm() -> None:
    """The baseline's pre-reader in C++ against ``OfflineBaseline.read_tape`` (a ``torch.nn.LSTM``
    over packed sequences), rows of different lengths, float64: final states and the gradients of
    the reader's weights to relative 1e-12 (absolute 1e-14)."""
    module = native.extension()
    assert module is not None
    baseline = OfflineBaseline(20, 7, initial_state=0.1).double()
    generator = torch.Generator().manual_seed(6)
    baseline.pre_reader.weight_hh_l0.data.normal_(0, 0.5, generator=generator)
    tape = torch.randint(0, NUM_SYMBOLS, (6, 9), generator=generator)
    lengths = torch.tensor([9, 3, 5, 9, 1, 7])
    reader = baseline.pre_reader
    expected = baseline.read_tape(tape, lengths, torch.float64)
    actual = module.pre_read(tape, lengths, reader.weight_ih_l0, reader.weight_hh_l0, reader.bias_ih_l0 + reader.bias_hh_l0, 0.1)
    weights = [torch.randn(6, 7, dtype=torch.float64, generator=generator) for _ in range(2)]

    def gradients(state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        total = (state[0] * weights[0]).sum() + (state[1] * weights[1]).sum()
        return torch.autograd.grad(total, list(reader.parameters()))

    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(gradients(actual), gradients(expected)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_argmax_matches_torch_argmax_ties_and_nan_included(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(6)
    values = torch.randint(0, 4, (5, 9, NUM_SYMBOLS), generator=generator).to(dtype)  # many ties
    values[0, 0, 7] = float("nan")
    values[1, 2, 0] = float("nan")
    values[1, 2, 3] = float("nan")
    values[2, :, :] = float("-inf")
    module = native.extension()
    assert module is not None
    for case in (values, values.transpose(0, 1), values[:, :, :1]):
        assert torch.equal(module.argmax_last(case), case.argmax(-1))
        assert torch.equal(fused.argmax_last(case), case.argmax(-1))


@pytest.mark.usefixtures("fresh_extension")
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("gates", [0, 1, 2])
@pytest.mark.parametrize("predicting", [13, 0])
def test_native_prediction_head_matches_the_torch_one(gates: int, predicting: int, scaled: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``fused.predict`` in C++ against its torch version, float64, with the hidden states a
    strided view (as the finish node hands them over) and with no predicting step at all: the
    rewards and predictions, and the gradients of the states, the cells, the head and (with
    ``model.shortcut_scale``) the gates' scales, to relative 1e-12 (absolute 1e-14)."""
    generator = torch.Generator().manual_seed(7)
    size, steps, units, width = 4, 6, 5, NUM_SYMBOLS
    states = torch.randn(size, steps, 2 * units, dtype=torch.float64, generator=generator, requires_grad=True)
    cells = torch.randn(size, steps, width, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(NUM_SYMBOLS + gates, units, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(NUM_SYMBOLS + gates, dtype=torch.float64, generator=generator, requires_grad=True)
    rows = torch.randperm(size * steps, generator=generator)[:predicting].sort().values
    symbols = torch.randint(0, NUM_SYMBOLS, (predicting,), generator=generator)
    targets = torch.randint(0, NUM_SYMBOLS, (predicting,), generator=generator)
    upstream = torch.randn(size, steps, dtype=torch.float64, generator=generator)
    scales = None
    if scaled and gates:
        scales = (1.0 + 4.0 * torch.rand(gates, dtype=torch.float64, generator=generator)).requires_grad_()

    def run(use_native: bool) -> tuple[torch.Tensor, ...]:
        monkeypatch.setenv(native.SWITCH, "1" if use_native else "0")
        native.extension.cache_clear()
        assert (native.extension() is not None) == use_native
        hidden = states[..., :units]  # not contiguous
        rewards, predictions = fused.predict(hidden, cells if gates == 2 else None, symbols, rows, targets, weight, bias,
                                             gates, scales)
        inputs = [states, weight, bias] + ([cells] if gates == 2 else []) + ([scales] if scales is not None else [])
        return (rewards.detach(), predictions, *torch.autograd.grad((rewards * upstream).sum(), inputs, allow_unused=True))

    expected, actual = run(False), run(True)
    assert torch.equal(actual[1], expected[1])
    assert bool((actual[1] >= 0).sum() == predicting)
    for a, b in zip(actual[:1] + actual[2:], expected[:1] + expected[2:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
