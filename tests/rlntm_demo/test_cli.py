"""The command line: exit status 0 on a pass, 1 on a mismatch, 2 on misuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlntm_demo.cli import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, main, make_parser

ROOT = Path(__file__).resolve().parents[2]


def test_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--task", "copy", "--controller", "lstm"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "(a) policy parameters" in out and "(b) baseline LSTM parameters" in out
    assert out.count("reinforce_check PASSED") == 2
    assert out.rstrip().endswith("rlntm-demo check copy / lstm: passed")


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
        (["train"], "invalid choice: 'train'"),
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
