"""The pytest plugin, run through pytester: options, skipping, the fixture, precedence, the summary.

The plugin is installed through its ``pytest11`` entry point, so it also loads in the sessions
pytester starts; it must never be listed in ``pytest_plugins`` as well (double registration).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Imported here, before any pytester run, so that the in-process runs find them in sys.modules
# and do not import (and then drop) torch and the library each time.
import torch
import reinforce_check.report  # noqa: F401
from reinforce_check.check import check_reinforce
from reinforce_check.pytest_plugin import SETTINGS, CheckRecord, Settings, format_summary, summary_title

pytest_plugins = ["pytester"]

EPISODES = textwrap.dedent(
    """
    import pytest
    import torch

    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    payoff = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)

    def correct():
        dist = torch.distributions.Categorical(logits=logits)
        action = dist.sample()
        reward = payoff[action]
        return reward, -dist.log_prob(action) * reward

    def sign_flipped():
        dist = torch.distributions.Categorical(logits=logits)
        action = dist.sample()
        reward = payoff[action]
        return reward, dist.log_prob(action) * reward
    """
)


@pytest.fixture(autouse=True, scope="module")
def _library_warmed_up() -> None:
    """Run one check before any pytester run.

    In-process pytester runs drop the modules first imported during the run. A first check imports
    some lazily (torch's shape-checking helpers pull in sympy), so without this every run would
    import them again.
    """
    logits = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        dist = torch.distributions.Categorical(logits=logits)
        action = dist.sample()
        return action.double(), -dist.log_prob(action) * action.double()

    assert check_reinforce(episode, logits).ok


def make_tests(pytester: pytest.Pytester, body: str, name: str = "test_policy") -> None:
    """Write a test module: the episodes above, then ``body``."""
    pytester.makepyfile(**{name: EPISODES + textwrap.dedent(body)})


SHOW_SETTINGS = """
    @pytest.mark.reinforce_check{marker}
    def test_settings(reinforce_check):
        print("SETTINGS", reinforce_check.settings.describe())
        reinforce_check(correct, {{"logits": logits}})
"""


def run_settings(pytester: pytest.Pytester, *args: str, marker: str = "") -> str:
    """Run a marked test that prints its settings; return the printed line."""
    make_tests(pytester, SHOW_SETTINGS.format(marker=marker))
    result = pytester.runpytest("--reinforce-check", "-s", *args)
    result.assert_outcomes(passed=1)
    lines = [line.split("SETTINGS ", 1)[1] for line in result.outlines if "SETTINGS " in line]
    assert len(lines) == 1, result.outlines
    return lines[0]


# --- loading and options ----------------------------------------------------------------------


def test_import_does_not_load_torch() -> None:
    code = "import sys, reinforce_check.pytest_plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_help_shows_group_options_and_ini_keys(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "exact REINFORCE gradient checks (reinforce_check):",
            "  --reinforce-check *",
            "  --reinforce-check-rtol=RTOL",
            "  --reinforce-check-atol=ATOL",
            "  --reinforce-check-max-sequences=N",
        ]
    )
    result.stdout.fnmatch_lines(["  reinforce_check_rtol (float):*"])
    result.stdout.fnmatch_lines(["  reinforce_check_atol (float):*"])
    result.stdout.fnmatch_lines(["  reinforce_check_max_sequences (int):*"])


def test_marker_is_registered_without_the_flag(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.reinforce_check(rtol=None, atol=None, max_sequences=None):*"])


def test_disabled_with_p_no(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:reinforce_check", "--reinforce-check")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --reinforce-check*"])


def test_disabled_with_p_no_leaves_the_marker_unknown(pytester: pytest.Pytester) -> None:
    # In a subprocess: in-process runs share pytest.mark's cache of known marker names.
    pytester.makepyfile("import pytest\n\n@pytest.mark.reinforce_check\ndef test_marked():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:reinforce_check", "--strict-markers", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'reinforce_check' not found in `markers` configuration option*"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--reinforce-check-rtol=-1", "expected a finite number >= 0, got '-1'"),
        ("--reinforce-check-atol=nan", "expected a finite number >= 0, got 'nan'"),
        ("--reinforce-check-rtol=tight", "expected a finite number >= 0, got 'tight'"),
        ("--reinforce-check-max-sequences=0", "expected an integer >= 1, got '0'"),
        ("--reinforce-check-max-sequences=1.5", "expected an integer >= 1, got '1.5'"),
    ],
)
def test_invalid_option_value_is_rejected(pytester: pytest.Pytester, option: str, message: str) -> None:
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    name = option.split("=")[0]
    result.stderr.fnmatch_lines([f"*argument {name}: {message}*"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # pytest >= 9.2 converts typed ini values itself and reports this one in its own words.
        ("reinforce_check_rtol = loose", "could not convert string to float: 'loose'"),
        ("reinforce_check_atol = -1e-9", "ini option reinforce_check_atol: expected a finite number >= 0, got -1e-09"),
        ("reinforce_check_max_sequences = 0", "ini option reinforce_check_max_sequences: expected an integer >= 1, got 0"),
    ],
)
def test_invalid_ini_value_is_rejected(pytester: pytest.Pytester, line: str, message: str) -> None:
    pytester.makeini(f"[pytest]\n{line}\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


# --- skipping and running ----------------------------------------------------------------------

MARKED_AND_UNMARKED = """
    @pytest.mark.reinforce_check
    def test_reinforce(reinforce_check):
        report = reinforce_check(correct, {"logits": logits})
        assert report.ok and report.num_sequences == 3

    def test_unmarked():
        assert True
"""


def test_marked_test_skipped_without_the_flag(pytester: pytest.Pytester) -> None:
    make_tests(pytester, MARKED_AND_UNMARKED)
    result = pytester.runpytest("-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] *: reinforce_check test: run with --reinforce-check to enable"])
    result.stdout.no_fnmatch_line("*reinforce_check: rtol=*")  # no header
    result.stdout.no_fnmatch_line("*exact gradient check(s)*")  # no summary


def test_marked_test_runs_and_passes_with_the_flag(pytester: pytest.Pytester) -> None:
    make_tests(pytester, MARKED_AND_UNMARKED)
    result = pytester.runpytest("--reinforce-check", "--strict-markers")
    result.assert_outcomes(passed=2)


def test_nothing_heavy_loaded_without_the_flag(pytester: pytest.Pytester) -> None:
    # A fresh interpreter: the marked test is skipped before its module would need torch, and
    # the plugin imports neither torch nor the library's check module on its own.
    pytester.makepyfile(
        test_light="""
        import sys
        import pytest

        @pytest.mark.reinforce_check
        def test_marked(reinforce_check):
            raise AssertionError("must not run without --reinforce-check")

        def test_light():
            assert "torch" not in sys.modules
            assert "reinforce_check.check" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=1)


def test_unmarked_test_can_use_the_fixture_without_the_flag(pytester: pytest.Pytester) -> None:
    make_tests(pytester, 'def test_direct(reinforce_check):\n    assert reinforce_check(correct, logits).ok\n')
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*exact gradient check(s)*")


def test_biased_estimator_fails_with_the_report(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        @pytest.mark.reinforce_check
        def test_reinforce(reinforce_check):
            reinforce_check(sign_flipped, {"logits": logits})
        """,
    )
    result = pytester.runpytest("--reinforce-check")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "REINFORCE gradient mismatch" in out
    assert "Mismatched elements" in out
    assert "reinforce_check FAILED: 3 action sequences" in out  # str(report), the table
    assert "sequences contributing most to the bias" in out
    # The plugin's own frames are hidden; the test's line is shown.
    assert "pytest_plugin.py" not in out
    result.stdout.fnmatch_lines(['*reinforce_check(sign_flipped, {"logits": logits})*'])


def test_raise_exception_false_returns_the_report(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        @pytest.mark.reinforce_check
        def test_reinforce(reinforce_check):
            report = reinforce_check(sign_flipped, {"logits": logits}, raise_exception=False)
            assert not report.ok
        """,
    )
    result = pytester.runpytest("--reinforce-check")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_policy.py::test_reinforce * MISMATCH * passed"])


def test_usage_error_propagates(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        @pytest.mark.reinforce_check
        def test_reinforce(reinforce_check):
            reinforce_check(correct, {"logits": logits.detach()})
        """,
    )
    result = pytester.runpytest("--reinforce-check")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ParameterError: parameter 'logits' does not require grad*"])


# --- precedence --------------------------------------------------------------------------------


def test_defaults_are_those_of_check_reinforce(pytester: pytest.Pytester) -> None:
    defaults = check_reinforce.__kwdefaults__
    assert defaults is not None
    line = run_settings(pytester)
    assert line == Settings(**{n: defaults[n] for n in SETTINGS}).describe()
    assert line == "rtol=1e-06 (default), atol=1e-09 (default), max_sequences=10000 (default)"


def test_ini_overrides_default(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nreinforce_check_rtol = 1e-4\nreinforce_check_max_sequences = 50\n")
    assert run_settings(pytester) == "rtol=0.0001 (ini), atol=1e-09 (default), max_sequences=50 (ini)"


def test_command_line_overrides_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nreinforce_check_rtol = 1e-4\nreinforce_check_max_sequences = 50\n")
    line = run_settings(pytester, "--reinforce-check-rtol=1e-5", "--reinforce-check-atol=1e-12")
    assert line == "rtol=1e-05 (command line), atol=1e-12 (command line), max_sequences=50 (ini)"


def test_marker_overrides_command_line(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nreinforce_check_max_sequences = 50\n")
    line = run_settings(pytester, "--reinforce-check-rtol=1e-5", marker="(rtol=1e-8, max_sequences=7)")
    assert line == "rtol=1e-08 (marker), atol=1e-09 (default), max_sequences=7 (marker)"


def test_toml_native_config(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest]\nreinforce_check_rtol = 1e-4\nreinforce_check_max_sequences = 50\n")
    assert run_settings(pytester) == "rtol=0.0001 (ini), atol=1e-09 (default), max_sequences=50 (ini)"


def test_function_marker_overrides_class_marker(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        @pytest.mark.reinforce_check(rtol=1e-3, max_sequences=5)
        class TestPolicy:
            @pytest.mark.reinforce_check(rtol=1e-7)
            def test_settings(self, reinforce_check):
                assert reinforce_check.settings.as_kwargs() == {"rtol": 1e-7, "atol": 1e-9, "max_sequences": 5}
        """,
    )
    pytester.runpytest("--reinforce-check").assert_outcomes(passed=1)


BUDGET = """
    @pytest.mark.reinforce_check{marker}
    def test_budget(reinforce_check):
        reinforce_check(correct, {{"logits": logits}})
"""


@pytest.mark.parametrize(
    ("ini", "args", "marker", "passes"),
    [
        ("2", (), "", False),  # ini: too small a budget for 3 sequences
        ("2", ("--reinforce-check-max-sequences=3",), "", True),  # command line > ini
        ("2", ("--reinforce-check-max-sequences=3",), "(max_sequences=2)", False),  # marker > command line
        ("3", ("--reinforce-check-max-sequences=2",), "(max_sequences=3)", True),  # marker > command line > ini
    ],
)
def test_precedence_decides_the_outcome(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...], marker: str, passes: bool
) -> None:
    pytester.makeini(f"[pytest]\nreinforce_check_max_sequences = {ini}\n")
    make_tests(pytester, BUDGET.format(marker=marker))
    result = pytester.runpytest("--reinforce-check", *args)
    if passes:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*SequenceBudgetError*"])


def test_overrides_win_over_marker(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        @pytest.mark.reinforce_check(rtol=1e-3)
        def test_overrides(reinforce_check):
            report = reinforce_check(correct, {"logits": logits}, rtol=1e-9, finite_differences="none")
            assert report.rtol == 1e-9 and report.fd_mode == "none"
        """,
    )
    pytester.runpytest("--reinforce-check").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("(rtool=1e-8)", "@pytest.mark.reinforce_check got an unknown keyword 'rtool'; it accepts rtol, atol, max_sequences"),
        ("(1e-8)", "@pytest.mark.reinforce_check takes keywords only (rtol, atol, max_sequences), got positional arguments (1e-08,)"),
        ("(rtol='tight')", "@pytest.mark.reinforce_check(rtol=...) must be a finite number >= 0, got 'tight'"),
        ("(max_sequences=2.5)", "@pytest.mark.reinforce_check(max_sequences=...) must be an integer >= 1, got 2.5"),
        ("(max_sequences=True)", "@pytest.mark.reinforce_check(max_sequences=...) must be an integer >= 1, got True"),
        ("(atol=-1)", "@pytest.mark.reinforce_check(atol=...) must be a finite number >= 0, got -1"),
    ],
)
@pytest.mark.parametrize("uses_fixture", [True, False], ids=["fixture", "no-fixture"])
def test_bad_marker_keywords_are_rejected(
    pytester: pytest.Pytester, marker: str, message: str, uses_fixture: bool
) -> None:
    argument = "reinforce_check" if uses_fixture else ""
    make_tests(pytester, f"@pytest.mark.reinforce_check{marker}\ndef test_marked({argument}):\n    pass\n")
    result = pytester.runpytest("--reinforce-check")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*test_policy.py::test_marked: {message}*"])


# --- header and summary ------------------------------------------------------------------------


def test_report_header_shows_settings_with_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nreinforce_check_atol = 1e-12\n")
    result = pytester.runpytest("--reinforce-check", "--reinforce-check-rtol=1e-7")
    result.stdout.fnmatch_lines(
        ["reinforce_check: rtol=1e-07 (command line), atol=1e-12 (ini), max_sequences=10000 (default)"]
    )


def run_checks(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    """Write the episodes and ``body`` as a test module and run it with ``--reinforce-check``."""
    make_tests(pytester, body)
    return pytester.runpytest("--reinforce-check")


def assert_summary(result: pytest.RunResult, title: str, *rows: str) -> None:
    """The run ends with the summary: ``title`` in pytest's separator, the header, the rule, then ``rows``."""
    header = "test *sequences  total probability  max rel error  seconds  check verdict  test outcome"
    result.stdout.fnmatch_lines([f"*= reinforce_check: {title} =*", header, "-*", *rows])


def test_terminal_summary_lists_every_check(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        @pytest.mark.reinforce_check
        def test_good(reinforce_check):
            reinforce_check(correct, {"logits": logits})
            reinforce_check(correct, logits, finite_differences="none")

        @pytest.mark.reinforce_check
        def test_bad(reinforce_check):
            reinforce_check(sign_flipped, {"logits": logits})

        def test_unmarked():
            pass
        """,
    )
    result = pytester.runpytest("--reinforce-check")
    result.assert_outcomes(passed=2, failed=1)
    assert_summary(
        result,
        "3 exact gradient check(s) in 2 test(s); checks: 2 passed, 1 mismatch; tests: 1 passed, 1 failed",
        "test_policy.py::test_good  3 * 1 exactly * passed",
        "test_policy.py::test_good  3 * passed",
        "test_policy.py::test_bad   3 * 2 * FAILED",
    )
    result.stdout.no_fnmatch_line("*test_unmarked  *")


def test_no_summary_when_no_check_ran(pytester: pytest.Pytester) -> None:
    make_tests(pytester, "def test_plain():\n    pass\n")
    result = pytester.runpytest("--reinforce-check")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*exact gradient check(s)*")


def test_format_summary_aligns_columns() -> None:
    records = [
        CheckRecord("t.py::a", 3, 1.0, 0.0, 0.004, True),
        CheckRecord("t.py::long_name", 12_345, 1 + 2e-15, 0.5, 1.5, False),
    ]
    lines = format_summary(records, {"t.py::a": "failed", "t.py::long_name": "passed"})
    assert lines[2] == "t.py::a          3          1 exactly          0              0.00     passed         FAILED"
    assert lines[3] == "t.py::long_name  12,345     1 + 2.0e-15        0.5            1.50     MISMATCH       passed"


def test_format_summary_shows_unknown_for_a_test_without_an_outcome() -> None:
    # A run interrupted inside a test leaves checks whose test never reported.
    lines = format_summary([CheckRecord("t.py::a", 3, 1.0, 0.0, 0.004, True)], {})
    assert lines[2].split()[-2:] == ["passed", "unknown"]
    title = summary_title([CheckRecord("t.py::a", 3, 1.0, 0.0, 0.004, True)], {})
    assert title.endswith("checks: 1 passed; tests: 1 unknown")


def test_summary_shows_an_expected_mismatch_as_a_passed_test(pytester: pytest.Pytester) -> None:
    # The check finds the bias (its verdict), the test asserted exactly that and passes (its outcome).
    result = run_checks(
        pytester,
        """
        @pytest.mark.reinforce_check
        def test_detects_bias(reinforce_check):
            report = reinforce_check(sign_flipped, {"logits": logits}, raise_exception=False)
            assert not report.ok

        @pytest.mark.reinforce_check
        def test_reinforce(reinforce_check):
            assert reinforce_check(correct, {"logits": logits}).ok
        """,
    )
    result.assert_outcomes(passed=2)
    assert_summary(
        result,
        "2 exact gradient check(s) in 2 test(s); checks: 1 passed, 1 mismatch; tests: 2 passed",
        "test_policy.py::test_detects_bias  3 * MISMATCH * passed",
        "test_policy.py::test_reinforce     3 * passed * passed",
    )
    result.stdout.no_fnmatch_line("*FAILED*")


def test_summary_counts_a_test_that_fails_after_its_checks_passed_as_failed(pytester: pytest.Pytester) -> None:
    result = run_checks(
        pytester,
        """
        @pytest.mark.reinforce_check
        def test_wrong_count(reinforce_check):
            reinforce_check(correct, {"logits": logits})
            report = reinforce_check(correct, logits, finite_differences="none")
            assert report.num_sequences == 4
        """,
    )
    result.assert_outcomes(failed=1)
    assert_summary(
        result,
        "2 exact gradient check(s) in 1 test(s); checks: 2 passed; tests: 1 failed",
        "test_policy.py::test_wrong_count  3 * passed * FAILED",
        "test_policy.py::test_wrong_count  3 * passed * FAILED",
    )


def test_summary_counts_a_test_whose_teardown_errors_as_an_error(pytester: pytest.Pytester) -> None:
    # pytest's own line says "1 passed, 1 error" for the one test; the summary counts the test once, by its worst phase.
    result = run_checks(
        pytester,
        """
        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown failed")

        @pytest.mark.reinforce_check
        def test_checked(reinforce_check, broken_teardown):
            reinforce_check(correct, {"logits": logits})
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    assert_summary(
        result,
        "1 exact gradient check(s) in 1 test(s); checks: 1 passed; tests: 1 error",
        "test_policy.py::test_checked  3 * passed * ERROR",
    )
