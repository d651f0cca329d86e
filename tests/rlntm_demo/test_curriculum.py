"""Curriculum: the distribution of Table 3, sampling, the rule that raises C, checkpoints."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import pytest
import torch

from rlntm_demo.curriculum import Curriculum, CurriculumConfig


def test_distribution_matches_hand_computation() -> None:
    # max_level = 3, C = 1: min(1 + e, 3) is 1, 2, 3 with probability 1/2, 1/4, 1/4.
    # Uniform over 1..j then gives d = 1: 1/2 + 1/8 + 1/12, d = 2: 1/8 + 1/12, d = 3: 1/12.
    cap = [Fraction(1, 2), Fraction(1, 4), Fraction(1, 4)]
    below = [sum(cap[j] / (j + 1) for j in range(d, 3)) for d in range(3)]
    p_all, p_below, p_exact = Fraction(1, 10), Fraction(1, 4), Fraction(13, 20)
    expected = [p_all / 3 + p_below * below[d] + p_exact * cap[d] for d in range(3)]
    assert expected == [Fraction(257, 480), Fraction(119, 480), Fraction(104, 480)]
    got = Curriculum(CurriculumConfig(max_level=3)).distribution()
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([float(p) for p in expected], abs=1e-15)


@pytest.mark.parametrize(("max_level", "level"), [(1, 1), (5, 1), (5, 5), (40, 7), (40, 38)])
def test_distribution_is_a_distribution(max_level: int, level: int) -> None:
    dist = Curriculum(CurriculumConfig(max_level=max_level, start_level=level)).distribution()
    assert dist.shape == (max_level,)
    assert bool((dist > 0).all())  # the first branch keeps mass on every complexity
    assert float(dist.sum()) == pytest.approx(1.0, abs=1e-12)
    # Nothing above C + e: complexities above C get mass only from the geometric tail and the
    # uniform branches, so their mass never increases with d.
    assert bool((dist[level - 1 :].diff() <= 1e-15).all())


@pytest.mark.parametrize(
    ("max_level", "level", "probabilities"),
    [(10, 3, (0.10, 0.25, 0.65)), (6, 6, (0.10, 0.25, 0.65)), (12, 1, (0.1, 0.225, 0.675)), (4, 2, (0.0, 1.0, 0.0))],
)
def test_sample_frequencies_match_distribution(max_level: int, level: int, probabilities: tuple) -> None:
    # With n draws the frequency of d has standard error sqrt(p (1 - p) / n). A deviation beyond
    # 4 standard errors has probability about 6e-5 per complexity, so below 1e-3 over the at most
    # 12 complexities of a case; the seed is fixed, so the test is deterministic anyway. At
    # n = 200,000 a bin with p = 0.1 has 4 standard errors = 0.27%, so a sampler that misplaces
    # a few tenths of a percent of mass there is caught.
    n = 200_000
    curriculum = Curriculum(CurriculumConfig(max_level=max_level, start_level=level, probabilities=probabilities))
    draws = curriculum.sample(n, torch.Generator().manual_seed(1234))
    assert draws.dtype == torch.long and draws.shape == (n,)
    assert int(draws.min()) >= 1 and int(draws.max()) <= max_level
    freq = torch.bincount(draws - 1, minlength=max_level).double() / n
    p = curriculum.distribution()
    stderr = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 4 * stderr + 1e-12).all()), (freq, p)


def test_sample_is_reproducible_and_leaves_global_rng_alone() -> None:
    curriculum = Curriculum(CurriculumConfig(max_level=20, start_level=4))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = curriculum.sample(1000, torch.Generator().manual_seed(7))
    b = curriculum.sample(1000, torch.Generator().manual_seed(7))
    c = curriculum.sample(1000, torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert curriculum.sample(0, torch.Generator()).shape == (0,)


def test_level_rises_only_below_threshold_after_refractory_period() -> None:
    curriculum = Curriculum(CurriculumConfig(max_level=10, threshold=0.2, min_updates_between=100))
    # A low error before the period has run does nothing; at the threshold is not below it.
    assert not any(curriculum.update(0.0) for _ in range(99))
    assert not curriculum.update(0.2)
    assert curriculum.level == 1
    assert curriculum.update(0.19)  # 101st update, below the threshold
    assert curriculum.level == 2
    # The period restarts at the increase: 99 low errors do nothing, the 100th raises C.
    assert not any(curriculum.update(0.0) for _ in range(99))
    assert curriculum.update(0.0)
    assert curriculum.level == 3
    # High errors never raise it, however long they last.
    assert not any(curriculum.update(0.5) for _ in range(1000))
    assert curriculum.level == 3


def test_level_never_exceeds_max_level() -> None:
    curriculum = Curriculum(CurriculumConfig(max_level=3, min_updates_between=0))
    results = [curriculum.update(0.0) for _ in range(10)]
    assert results == [True, True] + [False] * 8
    assert curriculum.level == 3
    assert int(curriculum.sample(1000, torch.Generator().manual_seed(0)).max()) <= 3


@pytest.mark.parametrize("error_rate", [-0.1, 1.5, math.nan])
def test_update_refuses_bad_error_rates(error_rate: float) -> None:
    with pytest.raises(ValueError, match="error_rate must be in"):
        Curriculum(CurriculumConfig(max_level=3)).update(error_rate)


@pytest.mark.parametrize("smoothing", [0.0, 0.8])
def test_state_dict_round_trip_through_torch_save(smoothing: float) -> None:
    config = CurriculumConfig(max_level=8, min_updates_between=5, smoothing=smoothing)
    original = Curriculum(config)
    for error in [0.0] * 8 + [0.5, 0.1]:
        original.update(error)
    reached = original.level
    assert reached >= 2
    buffer = io.BytesIO()
    torch.save({"curriculum": original.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["curriculum"]
    assert all(type(v) in (int, float) for v in state.values())
    restored = Curriculum(config)
    restored.load_state_dict(state)
    assert restored.state_dict() == original.state_dict()
    assert torch.equal(restored.distribution(), original.distribution())
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(original.sample(500, gen_a), restored.sample(500, gen_b))
    errors = [0.1, 0.3, 0.1, 0.1] + [0.0] * 12
    assert [original.update(x) for x in errors] == [restored.update(x) for x in errors]
    assert restored.level == original.level > reached


def test_load_state_dict_refuses_mismatched_state() -> None:
    state = Curriculum(CurriculumConfig(max_level=8, start_level=5)).state_dict()
    with pytest.raises(ValueError, match="max_level = 8, but this curriculum has max_level = 4"):
        Curriculum(CurriculumConfig(max_level=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="level must be in"):
        Curriculum(CurriculumConfig(max_level=8)).load_state_dict({**state, "level": 9})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_level": 0}, "max_level must be at least 1, not 0"),
        ({"max_level": 5, "start_level": 0}, r"start_level must be in \[1, max_level = 5\], not 0"),
        ({"max_level": 5, "start_level": 6}, r"start_level must be in \[1, max_level = 5\], not 6"),
        ({"max_level": 5, "threshold": 0.0}, r"threshold must be in \(0, 1\], not 0.0"),
        ({"max_level": 5, "threshold": 1.5}, r"threshold must be in \(0, 1\], not 1.5"),
        ({"max_level": 5, "min_updates_between": -1}, "min_updates_between must be at least 0, not -1"),
        ({"max_level": 5, "probabilities": (0.5, 0.5)}, "probabilities must have 3 entries"),
        ({"max_level": 5, "probabilities": (0.5, -0.1, 0.6)}, "probabilities must be non-negative"),
        ({"max_level": 5, "probabilities": (0.1, 0.25, 0.6)}, "probabilities must sum to 1, not 0.95"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CurriculumConfig(**kwargs)


def test_smoothing_averages_the_error_and_resets_after_an_increase() -> None:
    curriculum = Curriculum(CurriculumConfig(max_level=5, min_updates_between=1, threshold=0.2, smoothing=0.5))
    assert curriculum.update(0.0) is False  # 0.5 * 1 + 0.5 * 0 = 0.5: not below 0.2 yet
    assert curriculum.smoothed_error == 0.5
    assert curriculum.update(0.0) is False  # 0.25
    assert curriculum.update(0.0) is True  # 0.125 < 0.2
    assert curriculum.level == 2 and curriculum.smoothed_error == 1.0


def test_smoothing_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        CurriculumConfig(max_level=3, smoothing=1.0)


def test_sample_with_branches_draws_what_sample_draws_and_marks_the_third_branch() -> None:
    curriculum = Curriculum(CurriculumConfig(max_level=12, start_level=5))
    complexities, exact = curriculum.sample_with_branches(4000, torch.Generator().manual_seed(3))
    assert torch.equal(complexities, curriculum.sample(4000, torch.Generator().manual_seed(3)))
    # Third-branch draws are C + e: never below C.
    assert bool((complexities[exact] >= 5).all())
    assert abs(float(exact.double().mean()) - 0.65) < 0.03
    only_exact = Curriculum(CurriculumConfig(max_level=4, probabilities=(0.0, 0.0, 1.0)))
    assert bool(only_exact.sample_with_branches(50, torch.Generator().manual_seed(0))[1].all())
    never = Curriculum(CurriculumConfig(max_level=4, probabilities=(1.0, 0.0, 0.0)))
    assert not bool(never.sample_with_branches(50, torch.Generator().manual_seed(0))[1].any())


def test_the_authors_error_counts_only_the_third_branch_and_none_leaves_the_average() -> None:
    from rlntm_demo.curriculum import curriculum_error

    errors = torch.tensor([2.0, 0.0, 5.0, 1.0])
    lengths = torch.tensor([4, 2, 5, 10])
    exact = torch.tensor([True, True, False, True])
    batch_config = CurriculumConfig(max_level=5)
    authors = CurriculumConfig(max_level=5, error="authors", smoothing=0.8)
    assert curriculum_error(errors, lengths, exact, batch_config) == pytest.approx((0.5 + 0 + 1 + 0.1) / 4)
    assert curriculum_error(errors, lengths, exact, authors) == pytest.approx(3 / 16)
    assert curriculum_error(errors, lengths, torch.zeros(4, dtype=torch.bool), authors) is None
    curriculum = Curriculum(authors)
    curriculum.update(0.5)
    assert curriculum.smoothed_error == pytest.approx(0.8 + 0.2 * 0.5)
    curriculum.update(None)
    assert curriculum.smoothed_error == pytest.approx(0.8 + 0.2 * 0.5)
    with pytest.raises(ValueError, match="unknown curriculum error 'mean'"):
        CurriculumConfig(max_level=3, error="mean")


def test_a_trainer_with_the_authors_error_feeds_the_smoothed_third_branch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlntm_demo import training
    from rlntm_demo.presets import make_config
    from rlntm_demo.training import Trainer

    seen: list[tuple[torch.Tensor, float | None]] = []
    original = training.curriculum_error

    def spy(errors, target_len, exact_branch, config):  # type: ignore[no-untyped-def]
        value = original(errors, target_len, exact_branch, config)
        seen.append((exact_branch, value))
        return value

    monkeypatch.setattr(training, "curriculum_error", spy)
    trainer = Trainer(make_config("copy", "direct", "authors", seed=1, overrides=["batch_size=12", 'model.baseline="none"']))
    metrics = trainer.step()
    (exact_branch, value), = seen
    assert exact_branch.shape == (12,) and trainer.config.curriculum.error == "authors"
    expected = 1.0 if value is None else 0.8 + 0.2 * value
    assert metrics["smoothed_error"] == pytest.approx(expected)
