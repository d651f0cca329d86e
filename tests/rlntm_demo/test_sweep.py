"""Sweeps: validation before Ray starts, and a two-run sweep on a local Ray (train, skip, resume, fail)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rlntm_demo.cli import EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, main
from rlntm_demo.sweep import RunOutcome, RunSpec, SweepConfig, execute_run, require_ray, run_sweep

TINY = ["batch_size=16", "rollouts_per_input=4", "evaluation.instances=10", "evaluation.multipliers=[1,2]"]


def tiny_sweep(root: Path, max_updates: int = 2) -> SweepConfig:
    return SweepConfig(tasks=["copy"], controllers=["direct"], presets=["fast"], seeds=[0, 1],
                       max_updates=max_updates, root=root, overrides=TINY, num_cpus=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": ["multiply"]}, "unknown task 'multiply'; choose from: copy, duplicated-input"),
        ({"controllers": ["gru"]}, "unknown controller 'gru'; choose from: lstm, direct, feedforward"),
        ({"presets": ["slow"]}, "unknown preset 'slow'; choose from: paper, authors, fast"),
        ({"tasks": []}, "give at least one task"),
        ({"seeds": [0, 0]}, "seeds are repeated"),
        ({"seeds": [-1]}, "seeds must be integers >= 0"),
        ({"max_updates": 0}, "max_updates must be at least 1"),
        ({"threads_per_run": 0}, "threads_per_run must be at least 1"),
        ({"num_cpus": 2, "address": "auto"}, "leave it out with address"),
        ({"num_cpus": 1, "threads_per_run": 2}, "must be at least threads_per_run"),
        ({"overrides": ["model.colour=red"]}, "unknown setting 'model.colour'"),
    ],
)
def test_config_refuses_bad_settings(options: dict, message: str) -> None:
    settings = {"tasks": ["copy"], "controllers": ["direct"], "presets": ["fast"], **options}
    with pytest.raises(ValueError) as error:
        SweepConfig(**settings)
    assert message in str(error.value)


def test_config_lists_the_runs_and_their_budgets() -> None:
    config = SweepConfig(tasks=["copy", "reverse"], controllers="direct", presets=["fast", "paper"], seeds=[3],
                         root="r", overrides=["max_updates=7"])
    assert [run.name for run in config.runs()] == [
        "copy__direct__fast__seed3", "copy__direct__paper__seed3",
        "reverse__direct__fast__seed3", "reverse__direct__paper__seed3",
    ]
    assert config.folder(config.runs()[0]) == Path("r/copy__direct__fast__seed3")
    assert {config.budget(run) for run in config.runs()} == {7}
    assert SweepConfig(tasks=["copy"], controllers=["lstm"], max_updates=5).budget(RunSpec("copy", "lstm", "paper", 0)) == 5


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes "import ray" fail
    with pytest.raises(ImportError, match=r'pip install "reinforce-check\[sweep\]"'):
        require_ray()
    with pytest.raises(ImportError, match="ray"):
        run_sweep(SweepConfig(tasks=["copy"], controllers=["direct"], presets=["fast"]))


def test_a_folder_holding_another_run_is_a_failure(tmp_path: Path) -> None:
    folder = tmp_path / "copy__direct__fast__seed0"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"task": "reverse", "controller": "direct", "preset": "fast",
                                                     "seed": 0, "status": "solved"}))
    result = execute_run(RunSpec("copy", "direct", "fast", 0), folder, budget=2)
    assert result["status"] == "failed" and "holds the run reverse__direct__fast__seed0" in result["message"]


def test_a_folder_with_an_incomplete_summary_is_a_failure(tmp_path: Path) -> None:
    folder = tmp_path / "copy__direct__fast__seed0"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"task": "copy", "status": "solved"}))
    result = execute_run(RunSpec("copy", "direct", "fast", 0), folder, budget=2)
    assert result["status"] == "failed" and "holds the run of an incomplete summary" in result["message"]


def test_cli_misuse_is_refused_before_ray(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["sweep", "--tasks", "copy", "--controllers", "direct", "--out", str(tmp_path / "out")]
    assert main([*base, "--presets", "slow"]) == EXIT_USAGE
    assert "invalid choice: 'slow'" in capsys.readouterr().err
    assert main([*base, "--set", "model.colour=red"]) == EXIT_USAGE
    assert "unknown setting 'model.colour'" in capsys.readouterr().err
    assert main([*base, "--seeds", "1", "1"]) == EXIT_USAGE
    assert "seeds are repeated" in capsys.readouterr().err
    assert main(["sweep", "--controllers", "direct", "--out", "x"]) == EXIT_USAGE
    assert "the following arguments are required: --tasks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("statuses", "code"), [(["solved", "skipped", "max-updates"], EXIT_OK),
                                                 (["solved", "failed"], EXIT_MISMATCH),
                                                 (["diverged", "interrupted"], EXIT_MISMATCH),
                                                 (["interrupted", "skipped"], EXIT_INTERRUPTED)])
def test_cli_exit_status(statuses: list[str], code: int, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    import rlntm_demo.sweep

    outcomes = [RunOutcome(f"run{i}", Path(f"r/run{i}"), status, "why") for i, status in enumerate(statuses)]
    monkeypatch.setattr(rlntm_demo.sweep, "run_sweep", lambda config: outcomes)
    assert main(["sweep", "--tasks", "copy", "--controllers", "direct", "--out", "r"]) == code
    captured = capsys.readouterr()
    assert f"sweep: {len(statuses)} runs in r: " in captured.out
    assert ("run1 failed (r/run1): why" in captured.err) == ("failed" in statuses)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_two_run_sweep_on_a_local_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ray = require_ray()
    root = tmp_path / "sweep"
    runs = [root / "copy__direct__fast__seed0", root / "copy__direct__fast__seed1"]

    # 1. A local Ray started and stopped by the sweep itself: both runs train to their budget.
    seen: list[RunOutcome] = []
    outcomes = run_sweep(tiny_sweep(root), report=seen.append)
    assert not ray.is_initialized()
    assert [o.name for o in outcomes] == ["copy__direct__fast__seed0", "copy__direct__fast__seed1"]
    assert sorted(o.name for o in seen) == sorted(o.name for o in outcomes)
    assert [o.status for o in outcomes] == ["max-updates", "max-updates"], [str(o) for o in outcomes]
    for outcome, folder in zip(outcomes, runs):
        assert outcome.folder == folder and outcome.ok
        summary = _summary(folder)
        assert summary["status"] == "max-updates" and summary["updates"] == 2
        assert summary["seed"] == int(folder.name[-1]) and set(summary["greedy_exact_accuracy"]) == {"1", "2"}
        assert outcome.summary == summary
    printed = capsys.readouterr().out
    assert "[1/2] copy__direct__fast__seed" in printed and "[2/2]" in printed and "2 updates" in printed

    # 2 and 3 share one Ray this test starts, which the sweep uses and leaves running.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        # 2. Again, through the command line: both are skipped, nothing is trained.
        before = [(folder / "checkpoint.pt").stat().st_mtime_ns for folder in runs]
        argv = ["sweep", "--tasks", "copy", "--controllers", "direct", "--presets", "fast", "--seeds", "0", "1",
                "--max-updates", "2", "--out", str(root)]
        for setting in TINY:
            argv += ["--set", setting]
        assert main(argv) == EXIT_OK
        out = capsys.readouterr().out
        assert out.count(": skipped: already max-updates") == 2, out
        assert f"sweep: 2 runs in {root}: 2 skipped" in out
        assert [(folder / "checkpoint.pt").stat().st_mtime_ns for folder in runs] == before
        assert ray.is_initialized()

        # 3. seed 0's checkpoint is corrupt and it has no summary: it fails, alone. seed 1 was
        # interrupted (as Ctrl-C leaves it): it is resumed to the new budget.
        (runs[0] / "summary.json").unlink()
        (runs[0] / "checkpoint.pt").write_bytes(b"not a checkpoint")
        interrupted = {**_summary(runs[1]), "status": "interrupted"}
        (runs[1] / "summary.json").write_text(json.dumps(interrupted))
        failed, resumed = run_sweep(tiny_sweep(root, max_updates=3), progress=False)
        assert failed.status == "failed" and failed.summary is None and not failed.ok
        assert failed.folder == runs[0] and "CheckpointError" in failed.message and "checkpoint" in failed.message
        assert resumed.status == "max-updates" and resumed.summary["updates"] == 3
        assert _summary(runs[1])["updates"] == 3
        rows = (runs[1] / "metrics.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]  # each update once
    finally:
        ray.shutdown()
    assert not ray.is_initialized()

