"""TRL's RLOOTrainer, checked on the trainer itself with ``check_rloo``: the RLOO table's conclusions
hold, the trainer is left as it was, and settings the check cannot take are refused.

Every gradient check runs at the check's defaults, ``rtol=1e-6, atol=1e-9``. Relative biases are
exact figures of the enumeration: those of the settings that pass are float64 rounding (asserted
below 1e-12), those of the biased settings are asserted to 1e-6.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ...test_examples import load

pytest.importorskip("trl")

# The checks are thousands of tiny tensor operations: one intra-op thread each (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

CLAIMED = "E[r] - β·KL"


@pytest.fixture(scope="module")
def rloo() -> Iterator[Any]:
    yield load("trl_rloo")


@pytest.fixture(scope="module")
def rloo_table(rloo: Any) -> Iterator[dict[tuple[str, str], dict[str, Any]]]:
    yield rloo.main()


def test_every_row_is_checked_exactly_and_in_under_a_minute(rloo: Any, rloo_table: dict) -> None:
    assert [name for name, _ in rloo_table] == [name for name, _, _ in rloo.ROWS]
    for key, figures in rloo_table.items():
        # Two completions, each 1 or 2 of 3 tokens (a finished one draws its padding too): 73 paths.
        assert figures["num_sequences"] == 73, key
        assert figures["ground_truth"] == "autograd", key
        assert figures["seconds"] < 60, key


def test_the_leave_one_out_baseline_is_unbiased_for_the_objective_rloo_claims(rloo_table: dict) -> None:
    # E[r] - beta * KL(pi || pi_ref), with the reward clipped where reward_clip_range is set, and
    # E[r] alone with beta = 0: each passes, to float64 rounding.
    for key in (
        ("defaults (beta=0.05)", CLAIMED),
        ("beta=0", "E[r]"),
        ("reward_clip_range=(0, 1)", "E[clip(r)] - β·KL"),
    ):
        assert rloo_table[key]["ok"], key
        assert rloo_table[key]["relative_bias"] < 1e-12, key


def test_the_kl_penalty_takes_a_small_measured_share_of_the_gradient(rloo_table: dict) -> None:
    # Held to E[r] alone, the defaults (beta=0.05) fail by the gradient of the KL penalty.
    reward_alone = rloo_table[("defaults (beta=0.05)", "E[r]")]
    assert not reward_alone["ok"]
    assert reward_alone["relative_bias"] == pytest.approx(0.003701315627, rel=1e-6)


def test_normalized_advantages_and_masked_truncated_completions_are_biased(rloo_table: dict) -> None:
    # Dividing by the batch's advantage std, and dropping the gradient of a truncated completion
    # that keeps its reward in the other's baseline, are off by more than half the gradient.
    normalized = rloo_table[("normalize_advantages=True", CLAIMED)]
    assert not normalized["ok"]
    assert normalized["relative_bias"] == pytest.approx(0.5607061667, rel=1e-6)
    masked = rloo_table[("mask_truncated_completions=True", CLAIMED)]
    assert not masked["ok"]
    assert masked["relative_bias"] == pytest.approx(0.6918590077, rel=1e-6)


def _state(trainer: Any) -> dict[str, Any]:
    """What a training step or a check could change on the trainer and its model."""
    return {
        "attributes": set(vars(trainer)),
        "model attributes": set(vars(trainer.model)),
        "step": (trainer._step, trainer._buffered_inputs, trainer._current_train_step_time),
        "metrics": {mode: dict(values) for mode, values in trainer._metrics.items()},
        "logs": {name: list(trainer._logs[name]) for name in ("prompt", "completion", "advantages")},
        "training": trainer.model.training,
    }


def test_check_rloo_leaves_the_trainer_as_it_was_and_the_trainer_then_trains(rloo: Any, tmp_path) -> None:
    from reinforce_check.integrations import relative_bias
    from reinforce_check.integrations.trl import check_rloo

    trainer = rloo.rloo_trainer(str(tmp_path), beta=0.0)
    before = _state(trainer)
    with rloo.quietly():
        report = check_rloo(trainer, top_sequences=0)  # the defaults: rtol=1e-6, atol=1e-9
    assert report.ok and relative_bias(report) < 1e-12
    assert _state(trainer) == before
    assert "generate" not in vars(trainer.model) and "_calculate_rewards" not in vars(trainer)
    # One real step moves the parameters.
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.args.max_steps, trainer.args.learning_rate = 1, 0.1
    with rloo.quietly():
        trainer.train()
    assert any(not torch.equal(w, p) for w, p in zip(weights, trainer.model.parameters()))


def test_a_check_that_raises_leaves_the_trainer_as_it_was(rloo: Any, tmp_path) -> None:
    from reinforce_check import SequenceBudgetError
    from reinforce_check.integrations.trl import check_rloo

    trainer = rloo.rloo_trainer(str(tmp_path))
    before = _state(trainer)
    # The budget runs out after a few training steps have run, scored and logged.
    with pytest.raises(SequenceBudgetError), rloo.quietly():
        check_rloo(trainer, max_sequences=5)
    assert _state(trainer) == before


def test_check_rloo_refuses_what_it_cannot_check(rloo: Any, tmp_path) -> None:
    from reinforce_check.integrations import IntegrationError
    from reinforce_check.integrations.trl import check_rloo

    trainer = rloo.rloo_trainer(str(tmp_path))
    trainer.args.steps_per_generation = 2
    with pytest.raises(IntegrationError, match="steps_per_generation=1"):
        check_rloo(trainer)
    trainer.args.steps_per_generation = 1
    trainer.num_iterations = 2
    with pytest.raises(IntegrationError, match="num_iterations=1"):
        check_rloo(trainer)
    trainer.num_iterations = 1
    # A PEFT model's trainer has no reference model (peft is not installed here: its state is set).
    trainer.ref_model = None
    with pytest.raises(IntegrationError, match="with_kl=False"):
        check_rloo(trainer)
    with pytest.raises(IntegrationError, match="whole groups of num_generations=2"):
        check_rloo(trainer, [{"prompt": "a"}] * 3, with_kl=False)
    with pytest.raises(IntegrationError, match="takes a TRL RLOOTrainer; got GRPOTrainer"):
        check_rloo(load("trl_grpo").grpo_trainer("dapo", "group", str(tmp_path)))
