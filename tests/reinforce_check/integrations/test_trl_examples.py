"""TRL's GRPO example runs, and the conclusions its table draws hold.

Each gradient check in ``examples/trl_grpo.py`` runs at the check's defaults, ``rtol=1e-6,
atol=1e-9``. Relative biases are exact figures of the enumeration and are asserted to 1e-6; those
of the rows that pass are float64 rounding (below 1e-12: the backward of TRL's fused LM head, which
accumulates its gradients in float32, runs in float64 in a check).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from ...test_examples import load

pytest.importorskip("trl")

STD_SCALED = ("group", "batch")


@pytest.fixture(scope="module")
def grpo() -> Iterator[object]:
    yield load("trl_grpo")


@pytest.fixture(scope="module")
def grpo_table(grpo: object) -> Iterator[dict]:
    yield grpo.main()  # type: ignore[attr-defined]


def test_every_loss_type_and_scaling_is_checked_exactly_and_fast(
    grpo: object, grpo_table: dict
) -> None:
    loss_types = set(grpo.LOSS_TYPES)  # type: ignore[attr-defined]
    assert {"grpo", "bnpo", "dr_grpo", "dapo"} <= loss_types
    assert set(grpo_table) == {
        (lt, sr) for lt in loss_types for sr in ("group", "batch", "none")
    }
    for key, figures in grpo_table.items():
        # Two completions, each 1 or 2 of 3 tokens (a finished one draws its padding too): 73 paths.
        assert figures["num_sequences"] == 73, key
        assert figures["ground_truth"] == "autograd", key
        assert figures["seconds"] < 60, key


def test_no_setting_is_unbiased_for_the_expected_reward_it_claims(
    grpo_table: dict,
) -> None:
    for key, figures in grpo_table.items():
        assert not figures["ok"] and figures["relative_bias"] > 0.3, key


def test_the_own_reward_in_the_group_mean_scales_the_gradient_by_g_minus_1_over_g(
    grpo: object, grpo_table: dict
) -> None:
    group = grpo.GROUP  # type: ignore[attr-defined]
    # Without std scaling, a constant normalizer (dr_grpo's G * L) or a sequence-level sum (luspo)
    # leaves only the baseline's departure: exactly 1/G of the gradient is missing ...
    for loss_type in ("dr_grpo", "luspo"):
        figures = grpo_table[(loss_type, "none")]
        assert figures["relative_bias"] == pytest.approx(1 / group, abs=1e-6)
        # ... and the check passes against (G-1)/G times the claimed objective.
        assert figures["ok_with_own_baseline"], loss_type
        assert figures["relative_bias_with_own_baseline"] < 1e-12, loss_type


def test_std_scaling_is_biased_beyond_the_baseline(grpo_table: dict) -> None:
    for (loss_type, scale_rewards), figures in grpo_table.items():
        if scale_rewards in STD_SCALED:
            assert not figures["ok_with_own_baseline"], (loss_type, scale_rewards)
            assert figures["relative_bias_with_own_baseline"] > 0.05, (
                loss_type,
                scale_rewards,
            )
    # One prompt per batch: the batch's std is the group's, so the two scalings coincide.
    for loss_type in {lt for lt, _ in grpo_table}:
        group, batch = (
            grpo_table[(loss_type, "group")],
            grpo_table[(loss_type, "batch")],
        )
        assert group["relative_bias"] == pytest.approx(batch["relative_bias"], abs=1e-9)


def test_token_averaging_is_biased_beyond_the_baseline(grpo_table: dict) -> None:
    # A per-sequence token mean (grpo, sapo) or a mean over the batch's live tokens (bnpo, dapo, cispo,
    # vespo) divides by a length the sample decides: biased even with no std scaling.
    for loss_type in ("grpo", "sapo", "bnpo", "dapo", "cispo", "vespo"):
        figures = grpo_table[(loss_type, "none")]
        assert not figures["ok_with_own_baseline"], loss_type
        assert figures["relative_bias_with_own_baseline"] > 0.2, loss_type
    # At a ratio of 1, sapo's soft gate has grpo's gradient, and cispo's capped ratio (epsilon_high=5)
    # and vespo's gamma weight have dapo's; bnpo is dapo on one process.
    for same, as_ in (
        ("sapo", "grpo"),
        ("cispo", "dapo"),
        ("vespo", "dapo"),
        ("bnpo", "dapo"),
    ):
        for scale_rewards in ("group", "batch", "none"):
            assert grpo_table[(same, scale_rewards)]["relative_bias"] == pytest.approx(
                grpo_table[(as_, scale_rewards)]["relative_bias"], abs=1e-6
            ), (same, as_, scale_rewards)


def test_check_grpo_finds_the_examples_figures_and_leaves_the_trainer_as_it_was(
    grpo: object, tmp_path
) -> None:
    import warnings

    from reinforce_check.integrations import relative_bias
    from reinforce_check.integrations.trl import check_grpo, claimed_scale

    trainer = grpo.grpo_trainer("dr_grpo", "none", str(tmp_path))  # type: ignore[attr-defined]
    del (
        trainer.current_gradient_accumulation_steps
    )  # as a fresh trainer has it: train() sets it
    assert claimed_scale(trainer) == 1 / grpo.LENGTH  # type: ignore[attr-defined]
    tolerance = grpo.TOLERANCE  # type: ignore[attr-defined]  # the defaults: rtol=1e-6, atol=1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        claimed = check_grpo(
            trainer, raise_exception=False, top_sequences=0, **tolerance
        )
        baseline = check_grpo(
            trainer, scale=0.5 * claimed_scale(trainer), top_sequences=0, **tolerance
        )
    assert claimed.num_sequences == 73 and not claimed.ok
    assert relative_bias(claimed) == pytest.approx(0.5, abs=1e-6)
    assert baseline.ok and relative_bias(baseline) < 1e-12
    # Nothing of the check is left on the trainer or its model.
    assert "generate" not in vars(trainer.model)
    assert "_calculate_rewards" not in vars(trainer)
    assert not hasattr(trainer, "current_gradient_accumulation_steps")
    assert trainer._buffered_inputs is None and trainer._step == 0
    assert all(not values for values in trainer._metrics["train"].values())
    # And the trainer then trains: one real step moves the parameters.
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.args.max_steps, trainer.args.learning_rate = 1, 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert any(
        not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())
    )


def test_check_grpo_refuses_a_generation_batch_spread_over_steps(
    grpo: object, tmp_path
) -> None:
    import warnings

    from reinforce_check.integrations import IntegrationError
    from reinforce_check.integrations.trl import check_grpo

    trainer = grpo.grpo_trainer("dapo", "group", str(tmp_path))  # type: ignore[attr-defined]
    trainer.args.steps_per_generation = 2
    with (
        pytest.raises(IntegrationError, match="steps_per_generation=1"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        check_grpo(trainer)


def test_check_grpo_refuses_a_kl_penalty_it_cannot_state_as_an_objective(grpo: object, tmp_path) -> None:
    from reinforce_check.integrations import IntegrationError
    from reinforce_check.integrations.trl import check_grpo

    trainer = grpo.grpo_trainer("dapo", "group", str(tmp_path))  # type: ignore[attr-defined]
    trainer.beta = 0.04
    with pytest.raises(IntegrationError, match=r"beta=0\.04: .*beta=0\.0 \(GRPOConfig\(beta=0\.0\), TRL's default\)"):
        check_grpo(trainer)
    assert trainer.beta == 0.04
