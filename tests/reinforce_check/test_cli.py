"""The command line: targets, options, exit status, text and JSON output, misuse messages."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reinforce_check import check_reinforce
from reinforce_check.cli import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, main, make_parser, parse_factory_arg

FACTORIES = '''
"""Factories for the command-line tests: each returns (episode, params)."""

import torch

from helper import PAYOFF  # a neighbouring file: the file's directory is importable, as under `python FILE`


def _bandit(steps, bias):
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def episode():
        dist = torch.distributions.Categorical(logits=logits)
        log_prob = torch.zeros((), dtype=torch.float64)
        reward = torch.zeros((), dtype=torch.float64)
        for _ in range(steps):
            action = dist.sample()
            log_prob = log_prob + dist.log_prob(action)
            reward = reward + PAYOFF[action]
        # bias > 0 subtracts a baseline computed from the episode's own reward: biased
        return reward, -log_prob * (reward - bias * reward.detach())

    return episode, {"logits": logits}


def make(steps=1, label="unused"):
    """Correct REINFORCE on a bandit played ``steps`` times."""
    assert isinstance(label, str)
    return _bandit(steps, 0.0)


def make_biased(steps=2):
    return _bandit(steps, 0.5)


def make_batched():
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def episode(batch_size):
        dist = torch.distributions.Categorical(logits=logits.expand(batch_size, 3))
        action = dist.sample()
        return PAYOFF[action], -dist.log_prob(action) * PAYOFF[action]

    return episode, [logits]


def make_chatty():
    print("building the episode")
    return make()


def boom():
    raise ValueError("no environment named 'x'")


def single():
    return 5


def triple():
    return make() + ({},)


def swapped():
    episode, params = make()
    return params, episode


def frozen():
    theta = torch.zeros(3, dtype=torch.float64)  # no requires_grad: nothing to check

    def episode():
        action = torch.distributions.Categorical(logits=theta).sample()
        return action.double(), action.double()

    return episode, [theta]


def crashing():
    episode, params = make()

    def crash():
        episode()
        raise RuntimeError("shape mismatch in the episode")

    return crash, params


NOT_CALLABLE = 3
'''


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Undo what loading a target does to sys.path and sys.modules (the command does it for good)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def factories(tmp_path: Path) -> Path:
    """A directory holding ``factories.py`` and the ``helper.py`` it imports."""
    (tmp_path / "helper.py").write_text("import torch\nPAYOFF = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)\n")
    path = tmp_path / "factories.py"
    path.write_text(FACTORIES)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parser_defaults_are_those_of_check_reinforce(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, factories: Path
) -> None:
    signature = inspect.signature(check_reinforce)
    help_text = " ".join(make_parser().format_help().split())
    for name, flag in (("rtol", "--rtol X"), ("atol", "--atol X"), ("fd_step", "--fd-step H"), ("seed", "--seed N")):
        assert f"{flag} " in help_text
        assert f"(default {signature.parameters[name].default})" in help_text.split(f"{flag} ", 1)[1]
    # Options left out are not passed at all, so the library's defaults apply.
    passed: list[dict[str, object]] = []

    def recording_check(episode, params, **options):
        passed.append(options)
        return check_reinforce(episode, params, **options)

    monkeypatch.setattr("reinforce_check.check.check_reinforce", recording_check)
    code, _, _ = run(capsys, f"{factories}:make")
    assert code == 0 and passed == [{}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps=3", ("steps", 3)),
        ("scale=-0.5", ("scale", -0.5)),
        ("flag=True", ("flag", True)),
        ("shape=(2, 3)", ("shape", (2, 3))),
        ("name=lstm", ("name", "lstm")),
        ("quoted='3'", ("quoted", "3")),
        ("empty=", ("empty", "")),
        ("expr=1+", ("expr", "1+")),
    ],
)
def test_factory_arguments_are_literals_or_strings(text: str, expected: tuple[str, object]) -> None:
    assert parse_factory_arg(text) == expected


def test_pass_prints_the_report_and_exits_0(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, err = run(capsys, f"{factories}:make")
    assert code == EXIT_OK
    assert out.startswith("reinforce_check PASSED: 3 action sequences")
    assert err == ""


def test_mismatch_prints_the_message_then_the_table_and_exits_1(
    capsys: pytest.CaptureFixture[str], factories: Path
) -> None:
    code, out, err = run(capsys, f"{factories}:make_biased")
    assert code == EXIT_MISMATCH
    assert out.startswith("REINFORCE gradient mismatch")
    assert out.index("Parameter 'logits'") < out.index("reinforce_check FAILED: 9 action sequences")
    assert err == ""


def test_json_output_is_one_object(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, _ = run(capsys, f"{factories}:make", "--json", "--arg", "steps=2")
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["ok"] is True and data["num_sequences"] == 9
    assert data["message"] is None
    assert data["command"] == f"reinforce-check {factories}:make --json --arg steps=2"
    assert data["parameters"][0]["name"] == "logits"


def test_json_mismatch_exits_1_with_ok_false(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, _ = run(capsys, f"{factories}:make_biased", "--json")
    assert code == EXIT_MISMATCH
    data = json.loads(out)
    assert data["ok"] is False
    assert data["message"].startswith("REINFORCE gradient mismatch")
    assert data["top_sequences"]


def test_json_stdout_holds_nothing_else(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, err = run(capsys, f"{factories}:make_chatty", "--json")
    assert code == EXIT_OK
    assert json.loads(out)["ok"] is True
    assert "building the episode" in err


def test_factory_arguments_reach_the_factory(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, _ = run(capsys, f"{factories}:make", "--arg", "steps=3", "--arg", "label=hello", "--json")
    assert code == EXIT_OK
    assert json.loads(out)["num_sequences"] == 27


def test_options_reach_check_reinforce(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    argv = [f"{factories}:make_batched", "--batched", "--rtol", "1e-8", "--atol", "1e-12", "--variance"]
    argv += ["--finite-differences", "coordinate", "--fd-step", "1e-5", "--fd-rtol", "1e-4", "--seed", "3", "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == EXIT_OK
    data = json.loads(out)
    assert (data["batched"], data["rtol"], data["atol"], data["fd_mode"], data["fd_rtol"]) == (
        True,
        1e-8,
        1e-12,
        "coordinate",
        1e-4,
    )
    assert data["parameters"][0]["name"] == "param0"
    assert data["parameters"][0]["variance"] is not None
    assert data["parameters"][0]["numeric"] is not None


def test_top_sequences_option(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    argv = [f"{factories}:make_biased", "--top-sequences", "2", "--finite-differences", "none", "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == EXIT_MISMATCH
    data = json.loads(out)
    assert len(data["top_sequences"]) == 2
    # A mismatch is confirmed along one direction even with --finite-differences none: autograd agrees.
    assert [(c["label"], c["autograd_ok"]) for c in data["finite_differences"]] == [("all parameters", True)]


def test_dotted_module_form(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, factories: Path
) -> None:
    package = tmp_path / "cli_target_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "checks.py").write_text("from factories import make_biased as make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run(capsys, "cli_target_pkg.checks:make", "--json")
    assert code == EXIT_MISMATCH
    assert json.loads(out)["num_sequences"] == 9


def test_relative_path_form(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, factories: Path
) -> None:
    monkeypatch.chdir(factories.parent)
    assert run(capsys, "factories.py:make")[0] == EXIT_OK


def _misuse(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must be refused; return its last stderr line, the reason."""
    code, out, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("reinforce-check: error: ")
    return last


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("{dir}/factories.py", "is not MODULE:FACTORY"),
        ("{dir}/factories.py:", "is not MODULE:FACTORY"),
        ("{dir}/factories.py:1x", "is not a Python name"),
        ("{dir}/missing.py:make", "not found"),
        ("no_such_module_for_cli_tests:make", "no module named 'no_such_module_for_cli_tests'"),
        ("not a module:make", "neither a dotted module name nor a path"),
        ("{dir}/factories.py:nope", "has no attribute 'nope'; callables there: boom, crashing"),
        ("{dir}/factories.py:NOT_CALLABLE", "is not callable (it is of type int)"),
        ("{dir}/factories.py:single", "returned an object of type int; it must return a pair (episode, params)"),
        ("{dir}/factories.py:triple", "returned a tuple of length 3"),
        ("{dir}/factories.py:swapped", "the first element must be the episode callable"),
        ("{dir}/factories.py:frozen", "ParameterError: parameter 'param0' does not require grad"),
    ],
)
def test_misuse_exits_2_with_a_reason(
    capsys: pytest.CaptureFixture[str], factories: Path, target: str, reason: str
) -> None:
    assert reason in _misuse(capsys, target.format(dir=factories.parent))


def test_factory_that_raises(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    last = _misuse(capsys, f"{factories}:boom")
    assert last.endswith(f"the factory {factories}:boom raised ValueError: no environment named 'x'")


def test_tracebacks_of_user_code_precede_the_reason(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, err = run(capsys, f"{factories}:crashing")
    assert (code, out) == (EXIT_USAGE, "")
    assert 'raise RuntimeError("shape mismatch in the episode")' in err
    assert err.strip().splitlines()[-1] == (
        "reinforce-check: error: the episode raised RuntimeError: shape mismatch in the episode"
    )
    code, out, err = run(capsys, f"{factories}:boom")
    assert code == EXIT_USAGE
    assert "Traceback" in err and "in boom" in err


def test_module_that_fails_to_import(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_dependency_for_cli_tests\n")
    last = _misuse(capsys, f"{tmp_path / 'broken.py'}:make")
    assert "importing" in last and "ModuleNotFoundError" in last


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--arg", "steps=2", "--arg", "steps=3"], "--arg steps=... is given twice"),
        (["--arg", "colour=1"], "cannot be called with --arg colour=1"),
        (["--max-sequences", "2"], "more than max_sequences=2 action sequences"),
    ],
)
def test_bad_arguments_for_this_target(
    capsys: pytest.CaptureFixture[str], factories: Path, argv: list[str], reason: str
) -> None:
    assert reason in _misuse(capsys, f"{factories}:make", *argv)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--rtol", "-1"], "argument --rtol: expected a finite number >= 0"),
        (["--atol", "nan"], "argument --atol: expected a finite number >= 0"),
        (["--fd-step", "0"], "argument --fd-step: expected a finite number > 0"),
        (["--max-sequences", "0"], "argument --max-sequences: expected an integer >= 1"),
        (["--seed", "x"], "argument --seed: expected an integer"),
        (["--finite-differences", "central"], "argument --finite-differences: invalid choice"),
        (["--arg", "steps"], "argument --arg: expected KEY=VALUE"),
        (["--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_bad_option_values_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], reason: str) -> None:
    assert reason in _misuse(capsys, "m:f", *argv)


def test_json_misuse_writes_nothing_to_stdout(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    assert "returned an object of type int" in _misuse(capsys, f"{factories}:single", "--json")


def _python(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="100")
    return subprocess.run(
        [sys.executable, "-m", "reinforce_check", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_help_in_a_subprocess() -> None:
    result = _python("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: reinforce-check ")
    assert "MODULE:FACTORY" in result.stdout and "--finite-differences" in result.stdout


def test_end_to_end_in_a_subprocess(factories: Path) -> None:
    result = _python("factories.py:make_biased", "--finite-differences", "none", cwd=factories.parent)
    assert result.returncode == EXIT_MISMATCH, result.stderr
    assert result.stdout.startswith("REINFORCE gradient mismatch")
    assert "reinforce_check FAILED" in result.stdout
