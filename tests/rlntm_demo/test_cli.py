"""The command line: exit status 0 on a pass, 1 on a mismatch, 2 on misuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlntm_demo.cli import EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, main, make_parser

ROOT = Path(__file__).resolve().parents[2]


def test_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--task", "copy", "--controller", "lstm"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "(a) policy parameters" in out and "(b) baseline LSTM parameters" in out
    assert out.count("reinforce_check PASSED") == 2
    assert out.rstrip().endswith("rlntm-demo check copy / lstm: passed")


def test_check_passes_with_every_option_of_issue_19(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--task", "reverse", "--controller", "direct", "--shortcut-scale", "5", "--adjacent-memory",
                 "closed", "--input-start-marker", "--entropy-bonus", "0.3", "--entropy-mode", "per-step"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("reinforce_check PASSED") == 2
    assert "entropy bonus 0.3 per step, shortcut scale 5" in out and "input start marker" in out


def test_check_runs_the_authors_direct_access_on_either_step(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "--task", "reverse", "--controller", "direct", "--direct-access", "authors"]
    assert main(argv) == EXIT_USAGE
    assert "set adjacent_memory='off' (--set model.adjacent_memory=off)" in capsys.readouterr().err
    argv += ["--adjacent-memory", "off"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("reinforce_check PASSED") == 2 and "the authors' direct access" in out
    assert main([*argv, "--step-impl", "reference"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("reinforce_check PASSED") == 2 and "reference step" in out


def test_check_finds_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--task", "copy", "--controller", "feedforward", "--bug", "missing-pathwise-term"]) == EXIT_MISMATCH
    out = capsys.readouterr().out
    assert "reinforce_check FAILED" in out and out.rstrip().endswith("FAILED")


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--task", "reverse", "--controller", "direct", "--baseline", "online", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 1 and data[0]["ok"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "--task", "multiply", "--controller", "lstm"], "invalid choice: 'multiply' (choose from 'copy'"),
        (["check", "--task", "copy", "--controller", "gru"], "invalid choice: 'gru' (choose from 'lstm', 'direct'"),
        (["check", "--task", "copy", "--controller", "lstm", "--bug", "typo"], "invalid choice: 'typo'"),
        (["check", "--controller", "lstm"], "the following arguments are required: --task"),
        ([], "the following arguments are required: COMMAND"),
        (["train"], "the following arguments are required: --out"),
    ],
)
def test_misuse(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_check_too_large_is_misuse(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "--task", "sort", "--controller", "lstm", "--max-sequences", "10"]
    assert main(argv) == EXIT_USAGE
    assert "max_sequences" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "forward-reverse" in out and "{lstm,direct,feedforward}" in out
    assert make_parser().prog == "rlntm-demo"


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlntm_demo", "check", "--task", "copy"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == EXIT_USAGE
    assert "--controller" in result.stderr


TINY = ["--set", "batch_size=16", "--set", "rollouts_per_input=4", "--set", "evaluation.instances=10",
        "--set", "evaluation.multipliers=[1,2]", "--no-progress"]


def test_train_eval_trace_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = ["train", "--task", "copy", "--controller", "direct", "--preset", "fast", "--seed", "1",
            "--max-updates", "3", "--out", str(run), *TINY]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "copy / direct (fast, seed 1): max-updates after 3 updates" in out
    assert {p.name for p in run.iterdir()} >= {"metrics.csv", "checkpoint.pt", "summary.json"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 3 and summary["solved"] is False and summary["updates_to_solve"] is None

    assert main(["train", "--resume", "--out", str(run), "--max-updates", "4", "--no-progress"]) == EXIT_OK
    assert json.loads((run / "summary.json").read_text())["updates"] == 4
    capsys.readouterr()

    assert main(["eval", str(run), "--multipliers", "1", "3", "--instances", "5", "--json"]) == EXIT_OK
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["multiplier"] for r in results] == [1, 3] and results[1]["complexity"] == 60

    assert main(["trace", str(run), "--complexity", "3"]) == EXIT_OK
    assert (run / "trace.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out

    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == EXIT_OK
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--task", "copy", "--controller", "direct", "--preset", "slow", "--out", "x"], "invalid choice: 'slow'"),
        (["train", "--task", "copy", "--controller", "direct", "--out", "OUT", "--set", "model.colour=red"],
         "unknown setting 'model.colour'"),
        (["train", "--controller", "direct", "--out", "OUT"], "train needs --task and --controller"),
        (["train", "--resume", "--out", "OUT"], "no checkpoint at"),
        (["train", "--resume", "--task", "copy", "--out", "OUT"], "--resume takes the task, controller and settings"),
        (["eval", "OUT"], "no checkpoint at"),
        (["plot", "OUT", "--out", "x.png"], "no metrics at"),
    ],
)
def test_train_refuses_bad_input_before_any_work(argv: list[str], message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_print_config_shows_the_resolved_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["train", "--task", "reverse", "--controller", "lstm", "--preset", "authors", "--out", str(tmp_path / "r"),
            "--set", "optimizer.learning_rate=0.1", "--print-config"]
    assert main(argv) == EXIT_OK
    config = json.loads(capsys.readouterr().out)
    assert config["optimizer"]["learning_rate"] == 0.1 and config["batch_size"] == 300
    assert not (tmp_path / "r").exists()


def test_interrupted_training_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from rlntm_demo.training import Trainer

    step = Trainer.step

    def interrupt(self: Trainer) -> dict:
        metrics = step(self)
        os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(Trainer, "step", interrupt)
    argv = ["train", "--task", "copy", "--controller", "direct", "--preset", "fast", "--out", str(tmp_path), *TINY]
    assert main(argv) == EXIT_INTERRUPTED
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"


def test_build_prints_where_the_native_loop_is(capsys: pytest.CaptureFixture[str]) -> None:
    from rlntm_demo.fast import native

    assert main(["build"]) == EXIT_OK
    out = capsys.readouterr().out.strip()
    assert out == f"native step loop: {native.build().__file__}" and out.endswith(".so")


def test_build_without_a_compiler_says_so_and_exits_1(tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": "no-such-c++"}
    result = subprocess.run([sys.executable, "-m", "rlntm_demo", "build"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_MISMATCH
    assert "the native step loop could not be built: no C++ compiler: 'no-such-c++' is not on the PATH" in result.stderr


def documented_commands() -> list[tuple[str, str]]:
    """Every ``rlntm-demo`` command line in the README, the docs and the examples, joined across
    backslash continuations, with the file it is in."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst")), *sorted((ROOT / "examples").glob("*.py"))]
    commands = []
    for path in files:
        text = path.read_text().replace("\\\n", " ")
        commands += [(path.name, line[line.index("rlntm-demo"):]) for line in text.splitlines() if "rlntm-demo " in line]
    return commands


def test_documented_commands_write_under_runs_and_never_into_the_repository_root() -> None:
    """``runs/`` is ignored by git; ``docs/`` holds the regenerated figures and tables the docs show."""
    outputs = []
    for where, command in documented_commands():
        words = command.split()
        if "--out" in words and words.index("--out") + 1 < len(words):
            out = words[words.index("--out") + 1].strip("`'\")")
            outputs.append(out)
            assert out.startswith(("runs/", "docs/", "{run}/", "ROOT", "DIR", "PNG")), f"{where}: {command}"
    assert "runs/copy/curves.png" in outputs and "runs/sweep-results" in outputs


def test_plot_and_results_write_exactly_where_out_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "copy"
    argv = ["train", "--task", "copy", "--controller", "direct", "--preset", "fast", "--max-updates", "2", "--out", str(run), *TINY]
    assert main(argv) == EXIT_OK
    monkeypatch.chdir(tmp_path)
    before = {path.name for path in tmp_path.iterdir()}
    assert main(["plot", "runs/copy", "--out", "runs/copy/curves.png"]) == EXIT_OK
    assert main(["results", "runs", "--out", "runs/results"]) == EXIT_OK
    capsys.readouterr()
    assert {path.name for path in tmp_path.iterdir()} == before == {"runs"}
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "runs" / "results" / "table4.csv").exists()
