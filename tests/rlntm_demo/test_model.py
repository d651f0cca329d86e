"""The RL-NTM rollout: shapes, masking of finished rows, forced decisions, greedy mode, gradients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from rlntm_demo.config import InterfaceSpec, ModelConfig
from rlntm_demo.interfaces import MOVE_LEFT, OUTPUT_PREDICT, OUTPUT_STAY, STAY
from rlntm_demo.model import RLNTM
from rlntm_demo.objective import episode_losses
from rlntm_demo.tasks import Batch, make_task


def build(task_name: str, controller: str = "direct", seed: int = 0, **options: object) -> tuple[RLNTM, Batch]:
    task = make_task(task_name, num_symbols=4)
    batch = task.sample(complexity=3, batch_size=6, generator=torch.Generator().manual_seed(seed))
    config = ModelConfig(controller=controller, hidden_size=8, embedding_size=4, interfaces=task.interfaces,
                         init_std=0.5, inverse_temperature=1.0, **options)  # type: ignore[arg-type]
    return RLNTM(config, generator=torch.Generator().manual_seed(seed)), batch


@pytest.fixture
def seeded() -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


@pytest.mark.parametrize("controller", ["lstm", "direct", "feedforward"])
@pytest.mark.parametrize("task_name", ["copy", "forward-reverse", "addition"])
def test_rollout_shapes_and_every_target_emitted(task_name: str, controller: str, seeded: None) -> None:
    model, batch = build(task_name, controller)
    rollout = model.run_episode(batch)
    size, steps = rollout.mask.shape
    assert size == batch.batch_size and steps <= int(batch.steps.max())
    assert rollout.actions.shape == rollout.log_probs.shape == (size, steps, 3)
    for name in ("rewards", "baselines", "input_heads", "output_positions", "predictions"):
        assert getattr(rollout, name).shape == (size, steps), name
    assert (rollout.memory_heads is None) == (not batch_has_memory(task_name))
    assert torch.equal(rollout.emitted, batch.target_len)
    assert bool((rollout.lengths <= batch.steps).all())
    assert bool((rollout.rewards <= 0).all()) and bool((rollout.log_probs <= 0).all())
    # Rewards only where the step predicts; heads stay on the input.
    predicting = rollout.actions[..., 2] == OUTPUT_PREDICT
    assert bool((rollout.rewards[~predicting] == 0).all())
    assert bool(((rollout.input_heads >= 0) & (rollout.input_heads < batch.input_len[:, None])).all())


def batch_has_memory(task_name: str) -> bool:
    return make_task(task_name).interfaces.memory


def test_forward_only_input_never_moves_left(seeded: None) -> None:
    model, batch = build("forward-reverse")
    rollout = model.run_episode(batch)
    assert not bool((rollout.actions[..., 0] == MOVE_LEFT).any())
    assert bool((rollout.input_heads[:, 1:] >= rollout.input_heads[:, :-1]).all())


def test_finished_rows_are_masked_and_forced(monkeypatch: pytest.MonkeyPatch, seeded: None) -> None:
    """After its last target a row has one feasible choice per decision: it can never branch."""
    model, batch = build("forward-reverse")
    seen: list[torch.Tensor] = []
    original = torch.multinomial

    def recording(probs: torch.Tensor, num_samples: int, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(probs.detach())
        return original(probs, num_samples, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "multinomial", recording)
    rollout = model.run_episode(batch, all_steps=True)
    steps = rollout.mask.shape[1]
    assert steps == int(batch.steps.max()) and len(seen) == steps  # one call per step, (B * 3, 3) rows
    assert not bool(rollout.mask.all())  # some row finished early
    for t in range(steps):
        done = ~rollout.mask[:, t]
        for k, stay in enumerate([STAY, STAY, OUTPUT_STAY]):
            probs = seen[t].view(batch.batch_size, 3, 3)[:, k][done]
            assert bool((probs[:, stay] == 1).all()) and bool((probs.sum(1) == 1).all())
        assert bool((rollout.log_probs[:, t][done] == 0).all())
        assert bool((rollout.rewards[:, t][done] == 0).all())
        assert bool((rollout.baselines[:, t][done] == 0).all())
        assert bool((rollout.predictions[:, t][done] == -1).all())


def test_prediction_forced_when_steps_run_out(seeded: None) -> None:
    model, batch = build("reverse")
    tight = batch.with_steps(int(batch.target_len.max()))
    rollout = model.run_episode(tight)
    full = tight.target_len == tight.steps
    assert bool(full.any())
    assert bool((rollout.actions[full][..., 2] == OUTPUT_PREDICT).all())


def test_greedy_is_deterministic_and_samples_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = build("repeat-copy-forward")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("greedy mode sampled")

    monkeypatch.setattr(torch.distributions.Categorical, "sample", refuse)
    monkeypatch.setattr(torch, "multinomial", refuse)
    first = model.run_episode(batch, greedy=True)
    second = model.run_episode(batch, greedy=True)
    assert torch.equal(first.actions, second.actions) and torch.equal(first.rewards, second.rewards)


def test_rows_do_not_interact() -> None:
    """A row behaves the same alone as within a batch (greedy, so without randomness)."""
    model, batch = build("sort")
    together = model.run_episode(batch, greedy=True)
    for row in (0, 3):
        alone = model.run_episode(batch.select([row]), greedy=True)
        steps = alone.mask.shape[1]
        assert torch.equal(alone.actions[0], together.actions[row, :steps])
        torch.testing.assert_close(alone.rewards[0], together.rewards[row, :steps])
        torch.testing.assert_close(alone.baselines[0], together.baselines[row, :steps])


def test_gradients_reach_memory_writes_and_baseline_stays_apart(seeded: None) -> None:
    model, batch = build("forward-reverse")
    losses = episode_losses(model.run_episode(batch))
    losses.pathwise.sum().backward(retain_graph=True)
    value_head = model.controller.value_head.weight
    assert value_head.grad is not None and bool(value_head.grad.abs().sum() > 0)  # through memory
    model.zero_grad()
    losses.baseline.sum().backward()
    assert all(p.grad is None or bool((p.grad == 0).all()) for p in model.policy_parameters().values())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.baseline_parameters().values())


class BaselineAfterEpisode(RLNTM):
    fuses_baseline = False


@pytest.mark.parametrize("controller", ["lstm", "direct", "feedforward"])
@pytest.mark.parametrize("task_name", ["copy", "forward-reverse"])
def test_the_baseline_run_after_the_episode_equals_the_fused_one(task_name: str, controller: str) -> None:
    """The same weights and sampled actions, float64: the baselines and every gradient of the
    total loss agree to relative 1e-10 (the two sum in different orders)."""
    results = []
    for cls in (RLNTM, BaselineAfterEpisode):
        model, batch = build(task_name, controller, read_window=1)
        model = model.double()
        model.__class__ = cls
        with torch.random.fork_rng():
            torch.manual_seed(3)
            rollout = model.run_episode(batch)
        episode_losses(rollout).total.sum().backward()
        results.append((rollout, {name: p.grad for name, p in model.named_parameters()}))
    (fused, fused_grads), (after, after_grads) = results
    assert torch.equal(fused.actions, after.actions)
    torch.testing.assert_close(after.baselines, fused.baselines, rtol=1e-10, atol=1e-12)
    assert fused_grads.keys() == after_grads.keys()
    for name, grad in fused_grads.items():
        assert grad is not None, name
        torch.testing.assert_close(after_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("baseline", ["none", "online", "offline", "both"])
def test_baseline_options(baseline: str, seeded: None) -> None:
    model, batch = build("copy", baseline=baseline)
    model.online_baseline.fill_(-0.5)
    rollout = model.run_episode(batch)
    assert (model.baseline is None) == (baseline in ("none", "online"))
    if model.baseline is None:
        assert model.baseline_parameters() == {}
    else:
        assert model.baseline_parameters()
    if baseline == "none":
        assert bool((rollout.baselines == 0).all())
    if baseline == "online":
        assert bool((rollout.baselines == -0.5 * rollout.mask).all())


def test_update_online_baseline() -> None:
    model, _ = build("copy", baseline="online", online_decay=0.5)
    returns = torch.tensor([[-4.0, -2.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    model.update_online_baseline(returns, mask)
    assert model.online_baseline[:4].tolist() == [-1.5, -1.0, 0.0, 0.0]
    model.update_online_baseline(returns, mask)
    assert model.online_baseline[:2].tolist() == [-2.25, -1.5]


def test_initialization_and_parameter_groups() -> None:
    model, _ = build("forward-reverse")
    policy, baseline = model.policy_parameters(), model.baseline_parameters()
    assert set(policy) | set(baseline) == {n for n, _ in model.named_parameters()}
    assert not set(policy) & set(baseline)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert abs(float(weights.std()) - 0.5) < 0.05  # N(0, init_std^2)
    same, _ = build("forward-reverse")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="memory_width must be NUM_SYMBOLS"):
        ModelConfig(controller="direct", memory_width=8)
    assert ModelConfig(controller="lstm", memory_width=8).memory_width == 8
    assert ModelConfig(controller="direct", memory_width=8, interfaces=InterfaceSpec(memory=False)).memory_width == 8
    with pytest.raises(ValueError, match="unknown baseline"):
        ModelConfig(baseline="learned")


def test_trace_of_one_row() -> None:
    traces = pytest.importorskip("rlntm_demo.traces")
    model, batch = build("forward-reverse")
    trace = model.trace(batch, row=2)
    assert isinstance(trace, traces.Trace)
    assert trace.input_symbols == batch.input[2, : int(batch.input_len[2])].tolist()
    assert trace.target_symbols == batch.target[2, : int(batch.target_len[2])].tolist()
    assert len(trace.predictions()) == len(trace.target_symbols)
    assert all(step.memory_head is not None for step in trace.steps)
    trace.validate()
    assert model.trace(batch, row=2) == trace  # greedy: the same every time


def test_initial_state_is_used() -> None:
    model, batch = build("copy", "lstm", initial_state=0.25)
    h, c = model.controller.initial_state(3, torch.float32)
    assert bool((h == 0.25).all()) and bool((c == 0.25).all())
    assert model.baseline is not None and model.baseline.initial_state == 0.25
    zero, _ = build("copy", "lstm")
    assert not torch.equal(model.run_episode(batch, greedy=True).baselines, zero.run_episode(batch, greedy=True).baselines)
    with pytest.raises(ValueError, match="initial_state must be finite"):
        ModelConfig(initial_state=float("nan"))


def test_greedy_episodes_may_outrun_max_steps(seeded: None) -> None:
    """Evaluation at lengths far beyond training: greedy episodes run past max_steps."""
    model, _ = build("copy", max_steps=8)
    batch = make_task("copy", num_symbols=4).sample(complexity=20, batch_size=3, generator=torch.Generator().manual_seed(1))
    model.online_baseline.fill_(-1.0)
    rollout = model.run_episode(batch, greedy=True)
    assert rollout.mask.shape[1] > 8 and torch.equal(rollout.emitted, batch.target_len)
    with pytest.raises(ValueError, match="max_steps"):
        model.run_episode(batch)


def test_circular_input_wraps_but_a_forward_only_input_does_not(seeded: None) -> None:
    """Sampled rollouts with a circular input reach past both ends (the head wraps); ForwardReverse
    keeps its forward-only head on the input even with ``circular_input``."""
    model, batch = build("reverse", circular_input=True)
    heads, lengths = [], batch.input_len[:, None]
    for _ in range(20):
        rollout = model.run_episode(batch)
        moves = rollout.actions[..., 0] - 1
        heads.append((rollout.input_heads, moves, rollout.mask))
    wrapped_left = any(bool(((h == 0) & (m == -1) & k).any()) for h, m, k in heads)
    wrapped_right = any(bool(((h == lengths - 1) & (m == 1) & k).any()) for h, m, k in heads)
    assert wrapped_left and wrapped_right
    assert all(bool(((h >= 0) & (h < lengths)).all()) for h, _, _ in heads)
    forward, forward_batch = build("forward-reverse", circular_input=True)
    for _ in range(20):
        rollout = forward.run_episode(forward_batch)
        assert bool((rollout.input_heads < forward_batch.input_len[:, None]).all())
        assert bool((rollout.actions[..., 0][rollout.mask] != MOVE_LEFT).all())


@pytest.mark.parametrize("task_name", ["copy", "repeat-copy"])
def test_the_adjacent_memory_setting_changes_nothing_without_a_memory_tape(task_name: str) -> None:
    """Runs of tasks without memory made before the fast preset dropped the gates are its runs still."""
    from rlntm_demo.presets import make_config

    def weights(adjacent: str) -> dict[str, torch.Tensor]:
        config = make_config(task_name, "direct", "fast", overrides=[f"model.adjacent_memory={adjacent}"])
        return RLNTM(config.model, generator=torch.Generator().manual_seed(0)).state_dict()

    open_, off = weights("open"), weights("off")
    assert open_.keys() == off.keys() and all(torch.equal(open_[k], off[k]) for k in open_)
