"""Training: reproducible, resumable exactly, safe on Ctrl-C and NaN, and it learns."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from rlntm_demo import training
from rlntm_demo.checkpoints import load_checkpoint
from rlntm_demo.metrics import FIELDS, read_metrics
from rlntm_demo.presets import make_config
from rlntm_demo.training import RunExistsError, Trainer, resume, train

SMALL = ["batch_size=16", "rollouts_per_input=4", "curriculum.min_updates_between=2", "checkpoint_every=3",
         "evaluation.instances=20", "evaluation.check_instances=10", "evaluation.multipliers=[1,2]"]
"""Tiny runs: 4 inputs x 4 rollouts, levels every 2 updates, checkpoints every 3."""


def small_config(max_updates: int = 8, preset: str = "fast", task: str = "copy", **extra: str):
    overrides = SMALL + [f"{k}={v}" for k, v in extra.items()]
    return make_config(task, "direct", preset, seed=5, max_updates=max_updates, overrides=overrides)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_updates_the_weights_and_reports_every_metric() -> None:
    trainer = Trainer(small_config())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.step()
    assert set(metrics) == set(FIELDS)
    assert metrics["update"] == 1 and metrics["episodes"] == 16
    assert not state_equal(before, trainer.model.state_dict())
    assert 0.0 <= metrics["error"] <= 1.0 and metrics["grad_norm_controller"] > 0


def test_training_leaves_torchs_global_random_state_alone() -> None:
    trainer = Trainer(small_config())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    trainer.step()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("preset", ["paper", "authors", "fast"])
def test_equal_seeds_give_equal_runs(preset: str) -> None:
    overrides = ["batch_size=12", "rollouts_per_input=1"] if preset != "fast" else []
    a = Trainer(small_config(preset=preset, **dict(o.split("=") for o in overrides)))
    b = Trainer(small_config(preset=preset, **dict(o.split("=") for o in overrides)))
    for _ in range(3):
        a.step(), b.step()
    assert state_equal(a.model.state_dict(), b.model.state_dict())
    c = Trainer(make_config("copy", "direct", preset, seed=6, overrides=SMALL + overrides))
    c.step()
    assert not torch.equal(c.model.controller.action_head.weight, a.model.controller.action_head.weight)


def _rows_without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(path)]


def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = train(small_config(max_updates=10), tmp_path / "whole", progress=False)
    first = train(small_config(max_updates=4), tmp_path / "split", progress=False)
    assert first["updates"] == 4 and first["status"] == "max-updates"
    # The first run stopped at its budget; resuming with a larger one must continue seamlessly.
    second = resume(tmp_path / "split", max_updates=10, progress=False)
    assert second["updates"] == whole["updates"] == 10
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert state_equal(a["model"], b["model"])
    assert torch.equal(a["action_rng"], b["action_rng"]) and torch.equal(a["data_rng"], b["data_rng"])
    assert a["curriculum"] == b["curriculum"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, entry in a["optimizer"]["state"].items():
        assert all(torch.equal(entry[name], b["optimizer"]["state"][key][name]) for name in entry)
    assert _rows_without_time(tmp_path / "whole" / "metrics.csv") == _rows_without_time(tmp_path / "split" / "metrics.csv")
    assert whole["greedy_exact_accuracy"] == second["greedy_exact_accuracy"]


def test_resuming_drops_metrics_written_after_the_checkpoint(tmp_path: Path) -> None:
    train(small_config(max_updates=5), tmp_path / "run", progress=False)  # checkpoint at 3, then at 5 (the end)
    state = load_checkpoint(tmp_path / "run")
    state_at_3 = Trainer(small_config(max_updates=3))
    for _ in range(3):
        state_at_3.step()
    torch.save(state_at_3.state_dict(), tmp_path / "run" / "checkpoint.pt")  # as if the run died after update 5's rows
    assert state["update"] == 5 and len(read_metrics(tmp_path / "run")) == 5
    resume(tmp_path / "run", max_updates=4, progress=False)
    assert [row["update"] for row in read_metrics(tmp_path / "run")] == [1.0, 2.0, 3.0, 4.0]


def test_the_checkpoint_is_a_plain_dict(tmp_path: Path) -> None:
    train(small_config(max_updates=2), tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["update"] == 2 and state["config"]["task"] == "copy"
    assert {"model", "optimizer", "curriculum", "action_rng", "data_rng"} <= set(state)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"solved", "updates_to_solve", "top_level_reached", "greedy_exact_accuracy"} <= set(summary)
    assert isinstance(summary["solved"], bool) and set(summary["greedy_exact_accuracy"]) == {"1", "2"}


def test_an_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    train(small_config(max_updates=1), tmp_path, progress=False)
    with pytest.raises(RunExistsError, match="already holds a run; continue it with --resume"):
        train(small_config(max_updates=1), tmp_path, progress=False)


def test_ctrl_c_finishes_the_update_saves_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = Trainer.step

    def step_then_interrupt(self: Trainer) -> dict:
        metrics = step(self)
        if self.update == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        return metrics

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background
    summary = train(small_config(max_updates=8), tmp_path, progress=False)
    assert summary["status"] == "interrupted" and summary["updates"] == 2
    assert load_checkpoint(tmp_path)["update"] == 2
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    losses = training.episode_losses

    def poisoned(rollout, config=None, *, group_size=1):  # type: ignore[no-untyped-def]
        result = losses(rollout, config, group_size=group_size)
        poisoned.calls += 1
        if poisoned.calls == 5:
            result.pathwise = result.pathwise * float("nan")
        return result

    poisoned.calls = 0
    monkeypatch.setattr(training, "episode_losses", poisoned)
    summary = train(small_config(max_updates=8), tmp_path, progress=False)
    assert summary["status"] == "diverged" and summary["updates"] == 4
    assert "the loss became nan at update 5" in summary["message"] and "learning_rate" in summary["message"]
    assert load_checkpoint(tmp_path)["update"] == 3  # the periodic checkpoint before the NaN


def test_a_passing_periodic_check_stops_the_run_only_once_confirmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The periodic greedy check's small sample can pass by luck; the run is solved only when the
    final evaluation's instances agree, so a stopped run is never summarized as unsolved."""
    from rlntm_demo.evaluation import LengthResult

    trainer = Trainer(small_config(**{"curriculum.start_level": "20"}))
    assert trainer.curriculum.at_top
    confirmation = {"exact": 0.5}

    def fake_evaluate(*, multipliers=None, instances=None, seed=0):
        exact = 1.0 if instances == trainer.config.evaluation.check_instances else confirmation["exact"]
        return {1: LengthResult(multiplier=1, complexity=20, instances=instances or 0, exact=exact, per_symbol=exact)}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    assert trainer._maybe_evaluate(just_reached=True) == 1.0
    assert trainer.solved_at is None  # the confirmation failed: training goes on
    confirmation["exact"] = 0.995
    trainer._maybe_evaluate(just_reached=True)
    assert trainer.solved_at == trainer.update


def test_a_solved_run_trains_updates_after_solved_more_and_records_the_solving_update(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlntm_demo.evaluation import LengthResult

    def perfect(self, *, multipliers=None, instances=None, seed=0):
        return {m: LengthResult(multiplier=m, complexity=20 * m, instances=instances or 1, exact=1.0, per_symbol=1.0)
                for m in (multipliers or (1, 2))}

    monkeypatch.setattr(Trainer, "evaluate", perfect)
    config = small_config(max_updates=50, **{"curriculum.start_level": "20", "evaluation.every": "1",
                                          "updates_after_solved": "4"})
    summary = train(config, tmp_path, progress=False)
    assert summary["status"] == "solved" and summary["updates_to_solve"] == 1
    assert summary["updates"] == 5  # solved at the first update, then 4 more
    stopped = train(dataclasses.replace(config, updates_after_solved=0), tmp_path / "stopped", progress=False)
    assert stopped["updates"] == stopped["updates_to_solve"] == 1


def _scores_by_update(trainer_scores: dict[int, float], training_length: dict[int, float] | None = None):
    """A fake ``Trainer.evaluate``: at the training length the score ``training_length`` gives the
    current update (1.0 where absent, so the run solves at once), and at any other length the score
    ``trainer_scores`` gives it (0 where absent); each call also records the first weight it saw,
    to tell which parameters were evaluated."""
    from rlntm_demo.evaluation import LengthResult

    seen: list[tuple[int, float, tuple[int, ...]]] = []

    def evaluate(self, *, multipliers=None, instances=None, seed=0):
        multipliers = tuple(multipliers or self.config.evaluation.multipliers)
        weight = float(next(iter(self.model.parameters())).detach().flatten()[0])
        seen.append((self.update, weight, multipliers))
        exact = {m: (training_length or {}).get(self.update, 1.0) if m == 1 else trainer_scores.get(self.update, 0.0)
                 for m in multipliers}
        return {m: LengthResult(multiplier=m, complexity=20 * m, instances=instances or 1, exact=exact[m], per_symbol=exact[m])
                for m in multipliers}

    return evaluate, seen


def test_model_selection_keeps_the_earliest_best_parameters_and_the_final_evaluation_uses_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Solved at update 2 (the first check), then checked every 2 updates at 3x (updates 2 to 10):
    the scores 0.2, 0.9, 0.5, 0.9, 0.1 keep update 4's parameters, which the final evaluation then sees,
    while the checkpoint goes on holding the last parameters, to resume from."""
    evaluate, seen = _scores_by_update({2: 0.2, 4: 0.9, 6: 0.5, 8: 0.9, 10: 0.1})
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    config = small_config(max_updates=50, **{"curriculum.start_level": "20", "evaluation.every": "2",
                                          "updates_after_solved": "8", "evaluation.select_on": "[3]"})
    summary = train(config, tmp_path, progress=False)
    assert summary["updates_to_solve"] == 2 and summary["updates"] == 10
    assert [update for update, _, multipliers in seen if multipliers == (3,)] == [2, 4, 6, 8, 10]
    assert summary["evaluated_update"] == 4
    weight_at_4 = next(weight for update, weight, multipliers in seen if update == 4 and multipliers == (3,))
    final = [(update, weight) for update, weight, multipliers in seen if multipliers == (1, 2)]
    assert final == [(10, weight_at_4)]
    state = load_checkpoint(tmp_path)
    assert state["selected"]["update"] == 4 and state["selected"]["score"] == 0.9
    assert float(next(iter(state["model"].values())).flatten()[0]) != weight_at_4


def test_model_selection_passes_over_parameters_that_no_longer_solve_the_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Update 4 scores best at 3x but has fallen to 50% at the training length: keeping it would make
    the summary call the solved run unsolved, so update 8, the best of the rest, is kept."""
    evaluate, _ = _scores_by_update({2: 0.2, 4: 0.9, 6: 0.5, 8: 0.6, 10: 0.1}, training_length={4: 0.5})
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    config = small_config(max_updates=50, **{"curriculum.start_level": "20", "evaluation.every": "2",
                                          "updates_after_solved": "8", "evaluation.select_on": "[3]"})
    summary = train(config, tmp_path, progress=False)
    assert summary["evaluated_update"] == 8
    assert summary["solved"] and summary["greedy_exact_accuracy"]["1"] == 1.0


def test_model_selection_survives_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate, _ = _scores_by_update({2: 0.2, 4: 0.9, 6: 0.5, 8: 0.95, 10: 0.1})
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    overrides = {"curriculum.start_level": "20", "evaluation.every": "2", "updates_after_solved": "8",
                 "evaluation.select_on": "[3,10]"}
    whole = train(small_config(max_updates=50, **overrides), tmp_path / "whole", progress=False)
    train(small_config(max_updates=6, **overrides), tmp_path / "split", progress=False)
    split = resume(tmp_path / "split", max_updates=50, progress=False)
    assert whole["evaluated_update"] == split["evaluated_update"] == 8
    a, b = load_checkpoint(tmp_path / "whole")["selected"], load_checkpoint(tmp_path / "split")["selected"]
    assert a["update"] == b["update"] and state_equal(a["model"], b["model"])


def test_without_model_selection_the_last_parameters_are_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate, seen = _scores_by_update({})
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    config = small_config(max_updates=50, **{"curriculum.start_level": "20", "evaluation.every": "2",
                                          "updates_after_solved": "4", "evaluation.select_on": "[]"})
    summary = train(config, tmp_path, progress=False)
    assert summary["evaluated_update"] == summary["updates"] == 6
    assert all(multipliers in ((1,), (1, 2)) for _, _, multipliers in seen)
    assert load_checkpoint(tmp_path)["selected"] is None


def test_selection_lengths_must_be_positive() -> None:
    with pytest.raises(ValueError, match="select_on must hold multiples of at least 1"):
        small_config(**{"evaluation.select_on": "[0]"})


def test_updates_after_solved_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="updates_after_solved must be at least 0"):
        small_config(updates_after_solved="-1")


def test_the_entropy_bonus_switches_to_its_top_level_value_at_the_top() -> None:
    """At the top level, ``entropy_bonus_at_top`` replaces ``entropy_bonus``: a run started there
    with 0.3 / 0 makes the very updates of a run without a bonus; below the top it does not."""
    def first_step(level: int, bonus: float, at_top: str) -> dict:
        config = small_config(**{"curriculum.start_level": str(level), "objective.entropy_bonus": str(bonus),
                                 "objective.entropy_bonus_at_top": at_top})
        trainer = Trainer(config)
        trainer.step()
        return trainer.model.state_dict()

    assert state_equal(first_step(20, 0.3, "0"), first_step(20, 0.0, "null"))
    assert not state_equal(first_step(20, 0.3, "null"), first_step(20, 0.0, "null"))
    assert not state_equal(first_step(19, 0.3, "0"), first_step(19, 0.0, "null"))


def test_fast_preset_solves_copy_with_direct_access(tmp_path: Path) -> None:
    """Learning, end to end: from scratch to solved (top level, greedy exact accuracy >= 99%)."""
    config = make_config("copy", "direct", "fast", seed=0, max_updates=600, overrides=["updates_after_solved=0"])
    summary = train(config, tmp_path, progress=False)
    assert summary["solved"] is True and summary["top_level_reached"] is True
    assert summary["updates_to_solve"] is not None and summary["updates_to_solve"] <= 600
    assert summary["greedy_exact_accuracy"]["1"] >= 0.99


def test_tensorboard_logging_writes_events_or_says_how_to_install_it(tmp_path: Path) -> None:
    config = small_config(max_updates=1, tensorboard="true")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            train(config, tmp_path, progress=False)
    else:
        train(config, tmp_path, progress=False)
        assert any((tmp_path / "tensorboard").iterdir())


def test_the_summary_lists_the_commits_that_trained_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run resumed after a code change names both commits, in order; one resumed on the same commit, one."""
    monkeypatch.setattr(training, "source_commit", lambda: "a" * 40)
    assert train(small_config(max_updates=2), tmp_path, progress=False)["commits"] == ["a" * 40]
    assert resume(tmp_path, max_updates=3, progress=False)["commits"] == ["a" * 40]
    monkeypatch.setattr(training, "source_commit", lambda: "b" * 40 + "+dirty")
    assert resume(tmp_path, max_updates=4, progress=False)["commits"] == ["a" * 40, "b" * 40 + "+dirty"]
