"""pytest plugin: exact REINFORCE gradient checks as part of a test suite.

Installed with the package (entry point ``pytest11``, name ``reinforce_check``). Tests marked
``@pytest.mark.reinforce_check`` run only under ``pytest --reinforce-check``; elsewhere they are
skipped. The ``reinforce_check`` fixture runs :func:`~reinforce_check.check_reinforce` with the
tolerances in force for the test, fails the test with the full report on a mismatch and records
every check for the summary table printed at the end of the run.

Settings resolve in :func:`resolve_settings`, the closest source first: marker keyword >
command line (``--reinforce-check-rtol``) > ini key (``reinforce_check_rtol``) > the default of
:func:`~reinforce_check.check_reinforce`.

Every pytest session in an environment where the package is installed loads this module, so it
must cost nothing unless asked: it imports pytest and the standard library only, and the library
itself (and with it torch) inside the fixture and the hooks that run for ``--reinforce-check``.
``pytest -p no:reinforce_check`` turns the plugin off.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from .report import CheckReport

__all__ = ["CheckRecord", "ReinforceCheckFixture", "Settings", "resolve_settings"]

FLAG = "--reinforce-check"
MARKER = "reinforce_check"
SETTINGS = ("rtol", "atol", "max_sequences")
"""The settings that marker, command line and ini can set, in the order they are shown."""

SKIP_REASON = f"reinforce_check test: run with {FLAG} to enable"


def non_negative_float(text: str) -> float:
    """Parse a tolerance: a finite number >= 0 (the ``type=`` of the tolerance options).

    >>> non_negative_float("1e-8")
    1e-08
    >>> non_negative_float("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number >= 0, got '-1'
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse a sequence budget: an integer >= 1 (the ``type=`` of ``--reinforce-check-max-sequences``).

    >>> positive_int("100")
    100
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer >= 1, got '0'
    """
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


_REQUIREMENTS = {"rtol": "a finite number >= 0", "atol": "a finite number >= 0", "max_sequences": "an integer >= 1"}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "rtol": non_negative_float,
    "atol": non_negative_float,
    "max_sequences": positive_int,
}
_HELP = {
    "rtol": "relative tolerance of the gradient comparison",
    "atol": "absolute tolerance of the gradient comparison",
    "max_sequences": "most action sequences a check may enumerate",
}
_INI_TYPES: dict[str, Literal["float", "int"]] = {"rtol": "float", "atol": "float", "max_sequences": "int"}
_METAVARS = {"rtol": "RTOL", "atol": "ATOL", "max_sequences": "N"}


def _option(name: str) -> str:
    return f"{FLAG}-{name.replace('_', '-')}"


def _ini(name: str) -> str:
    return f"reinforce_check_{name}"


@dataclass(frozen=True)
class Settings:
    """The settings a test's checks run with, and where each one came from.

    >>> settings = Settings(rtol=1e-8, atol=1e-9, max_sequences=100,
    ...                     sources={"rtol": "marker", "atol": "default", "max_sequences": "ini"})
    >>> settings.as_kwargs()
    {'rtol': 1e-08, 'atol': 1e-09, 'max_sequences': 100}
    >>> settings.describe()
    'rtol=1e-08 (marker), atol=1e-09 (default), max_sequences=100 (ini)'
    """

    rtol: float
    """Relative tolerance of the gradient comparison."""
    atol: float
    """Absolute tolerance of the gradient comparison."""
    max_sequences: int
    """Most action sequences a check may enumerate."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """The source of each setting, by name, one of ``"marker"``, ``"command line"``, ``"ini"`` and ``"default"``."""

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~reinforce_check.check_reinforce` these settings stand for."""
        return {name: getattr(self, name) for name in SETTINGS}

    def describe(self) -> str:
        """One line naming each value and its source, as the report header prints it."""
        return ", ".join(
            f"{name}={getattr(self, name)!r} ({self.sources.get(name, 'default')})" for name in SETTINGS
        )


@dataclass(frozen=True)
class CheckRecord:
    """One check run through the fixture, as the summary table shows it."""

    nodeid: str
    num_sequences: int
    total_probability: float
    max_rel_error: float
    seconds: float
    ok: bool


CHECKS_KEY = pytest.StashKey[list[CheckRecord]]()
"""``config.stash[CHECKS_KEY]``: every check of the session, in the order they ran."""
_CONFIGURED_KEY = pytest.StashKey[dict[str, tuple[Any, str]]]()


# --- options, ini keys and marker ------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reinforce_check", "exact REINFORCE gradient checks (reinforce_check)")
    group.addoption(
        FLAG,
        action="store_true",
        default=False,
        help=f"run the tests marked @pytest.mark.{MARKER} (skipped otherwise) and print a table of their checks",
    )
    for name in SETTINGS:
        group.addoption(
            _option(name),
            dest=f"reinforce_check_{name}",
            type=_PARSERS[name],
            default=None,
            metavar=_METAVARS[name],
            help=f"{_HELP[name]} (overrides the ini key {_ini(name)}; a marker keyword overrides both)",
        )
    for name in SETTINGS:
        parser.addini(
            _ini(name),
            f"reinforce_check: {_HELP[name]} (default: that of check_reinforce)",
            type=_INI_TYPES[name],
            default=None,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(rtol=None, atol=None, max_sequences=None): an exact REINFORCE gradient check, run only "
        f"with {FLAG}; the keywords override the command-line and ini settings of the {MARKER} fixture.",
    )
    config.stash[CHECKS_KEY] = []
    # Read the command line and the ini keys once, so that a bad ini value stops the run here.
    config.stash[_CONFIGURED_KEY] = _configured(config)


def _configured(config: pytest.Config) -> dict[str, tuple[Any, str]]:
    """The settings given on the command line or in the ini file: name -> (value, source)."""
    found: dict[str, tuple[Any, str]] = {}
    for name in SETTINGS:
        option = config.getoption(f"reinforce_check_{name}", None)
        if option is not None:
            found[name] = (option, "command line")
            continue
        try:
            raw = config.getini(_ini(name))
            if raw is None or raw == "":
                continue
            value = _PARSERS[name](raw)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise pytest.UsageError(f"ini option {_ini(name)}: {error}") from None
        found[name] = (value, "ini")
    return found


def _marker_settings(node: pytest.Item) -> dict[str, Any]:
    """The keywords of the ``reinforce_check`` markers on a test, the closest (function) one winning.

    A positional argument, an unknown keyword or a bad value fails the test (at setup) with a
    message that names the test and what to change.
    """
    found: dict[str, Any] = {}
    # iter_markers yields the closest marker first; apply the farthest first so the closest wins.
    for marker in reversed(list(node.iter_markers(MARKER))):
        if marker.args:
            pytest.fail(
                f"{node.nodeid}: @pytest.mark.{MARKER} takes keywords only ({', '.join(SETTINGS)}), "
                f"got positional arguments {marker.args!r}",
                pytrace=False,
            )
        for name, value in marker.kwargs.items():
            if name not in _PARSERS:
                pytest.fail(
                    f"{node.nodeid}: @pytest.mark.{MARKER} got an unknown keyword {name!r}; "
                    f"it accepts {', '.join(SETTINGS)} (pass other check_reinforce arguments to the fixture)",
                    pytrace=False,
                )
            wanted = int if name == "max_sequences" else (int, float)
            valid = isinstance(value, wanted) and not isinstance(value, bool)
            if valid:
                try:
                    found[name] = _PARSERS[name](str(value))
                except argparse.ArgumentTypeError:
                    valid = False
            if not valid:
                pytest.fail(
                    f"{node.nodeid}: @pytest.mark.{MARKER}({name}=...) must be {_REQUIREMENTS[name]}, got {value!r}",
                    pytrace=False,
                )
    return found


def _library_defaults() -> dict[str, Any]:
    from .check import check_reinforce  # imports torch: only once a check is wanted

    defaults = check_reinforce.__kwdefaults__ or {}
    return {name: defaults[name] for name in SETTINGS}


def resolve_settings(config: pytest.Config, node: pytest.Item | None = None) -> Settings:
    """The settings in force for ``node`` (or for the session, without a node).

    Each setting comes from the first of: the test's ``@pytest.mark.reinforce_check`` keyword,
    the command-line option, the ini key, the default of
    :func:`~reinforce_check.check_reinforce`.

    Arguments:
        config: the pytest config.
        node: the test item whose markers count, or ``None`` for the session-wide settings.

    Returns:
        The resolved :class:`Settings`.

    A marker with a positional argument, an unknown keyword or a bad value fails the test.
    """
    configured = config.stash.get(_CONFIGURED_KEY, None)
    if configured is None:
        configured = _configured(config)
    marker = _marker_settings(node) if node is not None else {}
    defaults = _library_defaults()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in SETTINGS:
        if name in marker:
            values[name], sources[name] = marker[name], "marker"
        elif name in configured:
            values[name], sources[name] = configured[name]
        else:
            values[name], sources[name] = defaults[name], "default"
    return Settings(**values, sources=sources)


# --- collection and setup --------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("reinforce_check"):
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Reject bad marker keywords even in tests that do not use the fixture.
    if item.config.getoption("reinforce_check") and item.get_closest_marker(MARKER) is not None:
        _marker_settings(item)


# --- the fixture -----------------------------------------------------------------------------


class ReinforceCheckFixture:
    """What the ``reinforce_check`` fixture returns: call it as ``check_reinforce`` without the settings.

    ``reinforce_check(episode, params, **overrides)`` runs
    :func:`~reinforce_check.check_reinforce` with :attr:`settings` (marker > command line > ini >
    default) and the keyword ``overrides``, which win over all of them. It returns the
    :class:`~reinforce_check.CheckReport`; on a mismatch it fails the test with the mismatch
    message and the full report table (unless ``raise_exception=False`` is passed, in which case
    the report comes back and ``report.ok`` says whether the check passed). Misuse errors
    (:class:`~reinforce_check.CheckUsageError`) propagate unchanged.
    """

    def __init__(self, settings: Settings, nodeid: str, records: list[CheckRecord]) -> None:
        self.settings = settings
        """The resolved :class:`Settings` of this test."""
        self._nodeid = nodeid
        self._records = records

    def __repr__(self) -> str:
        return f"<reinforce_check fixture: {self.settings.describe()}>"

    def __call__(self, episode: Callable[..., Any], params: Any, **overrides: Any) -> CheckReport:
        __tracebackhide__ = True
        from .check import check_reinforce
        from .report import ReinforceCheckError

        kwargs = self.settings.as_kwargs() | overrides
        mismatch: ReinforceCheckError | None = None
        try:
            report = check_reinforce(episode, params, **kwargs)
        except ReinforceCheckError as error:
            mismatch, report = error, error.report
        self._record(report)
        if mismatch is not None:
            # Outside the except block, so that the library's frames are not shown as a chained exception.
            pytest.fail(f"{mismatch}\n\n{report}")
        return report

    def _record(self, report: CheckReport) -> None:
        self._records.append(
            CheckRecord(
                nodeid=self._nodeid,
                num_sequences=report.num_sequences,
                total_probability=report.total_probability,
                max_rel_error=report.max_rel_error,
                seconds=report.seconds,
                ok=report.ok,
            )
        )


@pytest.fixture
def reinforce_check(request: pytest.FixtureRequest) -> ReinforceCheckFixture:
    """Run :func:`~reinforce_check.check_reinforce` with this test's settings; fail the test on a mismatch.

    ``reinforce_check(episode, params, **overrides)`` returns the report. The tolerances and
    ``max_sequences`` come from the ``reinforce_check`` marker, ``--reinforce-check-*`` options and
    ``reinforce_check_*`` ini keys; ``overrides`` (any keyword of ``check_reinforce``) win over them.
    """
    config = request.config
    settings = resolve_settings(config, request.node)
    return ReinforceCheckFixture(settings, request.node.nodeid, config.stash.setdefault(CHECKS_KEY, []))


# --- reporting -------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not config.getoption("reinforce_check"):
        return None
    return [f"reinforce_check: {resolve_settings(config).describe()}"]


_OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
"""The categories of pytest's own final count that a test with checks can end in, in the order
the summary's header counts them."""
_SEVERITY = ("error", "failed", "xpassed", "xfailed", "skipped", "passed")
"""The same categories, worst first: a test's worst phase decides its outcome, so a test whose call
passed but whose teardown errored is an error."""
NO_OUTCOME = "unknown"
"""The outcome of a test whose checks ran but whose report never came (an interrupted run)."""


def outcomes_by_test(stats: Mapping[str, list[Any]]) -> dict[str, str]:
    """Each test's outcome, as pytest counts it, from the terminal reporter's ``stats``.

    A test has a report for each of its phases (setup, call, teardown); its outcome is that of
    its worst one, so a test whose call passed and whose teardown failed is an ``"error"``, as in
    pytest's final line.

    Arguments:
        stats: ``terminalreporter.stats``: pytest's category (``"passed"``, ``"failed"``, ...) to
            the reports in it.

    Returns:
        Test id to one of ``"passed"``, ``"failed"``, ``"error"``, ``"skipped"``, ``"xfailed"`` and
        ``"xpassed"``.

    >>> from types import SimpleNamespace as Report
    >>> outcomes_by_test({"passed": [Report(nodeid="t.py::a"), Report(nodeid="t.py::b")],
    ...                "error": [Report(nodeid="t.py::b")], "warnings": [Report(nodeid="t.py::a")]})
    {'t.py::a': 'passed', 't.py::b': 'error'}
    """
    outcomes: dict[str, str] = {}
    for category in _SEVERITY[::-1]:  # the least severe first, so that a worse one overwrites it
        for report in stats.get(category, []):
            outcomes[report.nodeid] = category
    return outcomes


def _outcome_word(outcome: str) -> str:
    """How a row shows a test's outcome: failures in capitals, as pytest's own summary does."""
    return outcome.upper() if outcome in ("failed", "error") else outcome


def format_summary(records: list[CheckRecord], outcomes: Mapping[str, str]) -> list[str]:
    """The lines of the end-of-run table: one row per check.

    Each row shows the check's verdict (``passed``, or ``MISMATCH`` when the gradients disagree)
    apart from the outcome of the test that ran it: a test may expect a mismatch
    (``raise_exception=False``, then ``assert not report.ok``) and pass, or fail after its checks
    passed.

    Arguments:
        records: the checks, in the order they ran.
        outcomes: test id to the test's outcome (see :func:`outcomes_by_test`); a test missing from it
            shows ``unknown``.

    Returns:
        The table's lines: header, rule, rows.

    >>> record = CheckRecord("test_policy.py::test_reinforce", 3, 1.0, 2.5e-16, 0.01, True)
    >>> print("\\n".join(format_summary([record], {"test_policy.py::test_reinforce": "passed"})))
    test                            sequences  total probability  max rel error  seconds  check verdict  test outcome
    ------------------------------  ---------  -----------------  -------------  -------  -------------  ------------
    test_policy.py::test_reinforce  3          1 exactly          2.5e-16        0.01     passed         passed
    """
    # Only called once checks have run, so the library (and torch) are loaded already.
    from .report import format_probability, format_table

    rows = [
        [
            r.nodeid,
            f"{r.num_sequences:,}",
            format_probability(r.total_probability),
            f"{r.max_rel_error:.2g}",
            f"{r.seconds:.2f}",
            "passed" if r.ok else "MISMATCH",
            _outcome_word(outcomes.get(r.nodeid, NO_OUTCOME)),
        ]
        for r in records
    ]
    header = ["test", "sequences", "total probability", "max rel error", "seconds", "check verdict", "test outcome"]
    return format_table(header, rows)


def _counts(counts: Mapping[str, int], order: tuple[str, ...]) -> str:
    return ", ".join(f"{counts[name]} {name}" for name in order if counts.get(name))


def summary_title(records: list[CheckRecord], outcomes: Mapping[str, str]) -> str:
    """The title of the end-of-run table: how many checks ran in how many tests, and how each ended.

    Checks are counted by their verdict, tests (each once, however many checks it ran) by their
    outcome, so a test that expects a mismatch and gets it counts as a mismatch and a passed test.

    Arguments:
        records: the checks, in the order they ran.
        outcomes: test id to the test's outcome (see :func:`outcomes_by_test`).

    Returns:
        One line, without the separator pytest draws around it.

    >>> records = [CheckRecord("t.py::a", 3, 1.0, 0.0, 0.01, True),
    ...            CheckRecord("t.py::a", 3, 1.0, 0.0, 0.01, True),
    ...            CheckRecord("t.py::b", 3, 1.0, 2.0, 0.01, False)]
    >>> summary_title(records, {"t.py::a": "failed", "t.py::b": "passed"})
    'reinforce_check: 3 exact gradient check(s) in 2 test(s); checks: 2 passed, 1 mismatch; tests: 1 passed, 1 failed'
    """
    mismatches = sum(not r.ok for r in records)
    checks = {"passed": len(records) - mismatches, "mismatch": mismatches}
    tests: dict[str, int] = {}
    for nodeid in dict.fromkeys(r.nodeid for r in records):
        outcome = outcomes.get(nodeid, NO_OUTCOME)
        tests[outcome] = tests.get(outcome, 0) + 1
    return (
        f"reinforce_check: {len(records)} exact gradient check(s) in {sum(tests.values())} test(s); "
        f"checks: {_counts(checks, ('passed', 'mismatch'))}; tests: {_counts(tests, (*_OUTCOMES, NO_OUTCOME))}"
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    records = config.stash.get(CHECKS_KEY, [])
    if not config.getoption("reinforce_check") or not records:
        return
    outcomes = outcomes_by_test(terminalreporter.stats)
    terminalreporter.write_sep("=", summary_title(records, outcomes))
    for line in format_summary(records, outcomes):
        terminalreporter.write_line(line)
