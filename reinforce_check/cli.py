"""The command line: ``reinforce-check MODULE:FACTORY [options]``.

``MODULE`` is an importable module (``mypkg.checks``) or the path of a Python file
(``examples/bandit.py``); ``FACTORY`` names a callable in it that returns ``(episode, params)``,
the two arguments of :func:`~reinforce_check.check_reinforce`. The command builds them, runs the
check and prints the report. The same command runs as ``python -m reinforce_check``.

Exit status: ``0`` the check passed, ``1`` the gradients disagree, ``2`` the check could not be run
(a bad option or target, a factory that fails or returns the wrong thing, or a
:class:`~reinforce_check.CheckUsageError` from the library). The reason is the last line on
stderr, ``reinforce-check: error: ...``, preceded by a traceback when the user's code raised.

:func:`make_parser` builds the argument parser and :func:`main` runs a command line; importing
this module does neither, and torch is imported only once a check runs.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

__all__ = ["EXIT_MISMATCH", "EXIT_OK", "EXIT_USAGE", "main", "make_parser", "parse_factory_arg"]

PROG = "reinforce-check"

EXIT_OK = 0
"""The check passed."""
EXIT_MISMATCH = 1
"""The implementation's expected gradient differs from the exact one."""
EXIT_USAGE = 2
"""The check could not be run: the message on stderr says what to change."""

_FD_MODES = ("joint", "tensor", "coordinate", "none")

# The defaults of check_reinforce, shown in --help. Options left out are not passed, so the
# library's own defaults apply; tests/reinforce_check/test_cli.py keeps this table in step.
_DEFAULTS: dict[str, Any] = {
    "rtol": 1e-6,
    "atol": 1e-9,
    "max_sequences": 10_000,
    "batched": False,
    "finite_differences": "joint",
    "fd_step": 1e-6,
    "fd_rtol": 1e-5,
    "fd_atol": 1e-7,
    "variance": False,
    "top_sequences": 5,
    "seed": 0,
    "promote": None,
}


class _UsageError(Exception):
    """The command cannot run as given; the message says what to change."""


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def parse_factory_arg(text: str) -> tuple[str, Any]:
    """Parse one ``--arg KEY=VALUE`` into ``(key, value)``.

    The value is read as a Python literal (number, string, bool, None, tuple, list, dict) with
    :func:`ast.literal_eval`; anything else is kept as the string itself.

    Arguments:
        text: ``KEY=VALUE``, where ``KEY`` is a Python identifier.

    Returns:
        The keyword and its value.

    Raises:
        argparse.ArgumentTypeError: ``text`` has no ``=`` or ``KEY`` is not an identifier.

    >>> parse_factory_arg("steps=3"), parse_factory_arg("scale=0.5"), parse_factory_arg("name=lstm")
    (('steps', 3), ('scale', 0.5), ('name', 'lstm'))
    >>> parse_factory_arg("sizes=(2, 3)"), parse_factory_arg("tag='7'")
    (('sizes', (2, 3)), ('tag', '7'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY a Python identifier (for example --arg steps=3), got {text!r}"
        )
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return key, value


def make_parser() -> argparse.ArgumentParser:
    """Build the parser of the ``reinforce-check`` command line.

    Options left out are absent from the parsed namespace (``None``), so that
    :func:`~reinforce_check.check_reinforce` applies its own defaults.

    Returns:
        An :class:`argparse.ArgumentParser`; ``target`` is ``MODULE:FACTORY`` and ``args`` the list
        of ``(key, value)`` factory arguments.

    >>> ns = make_parser().parse_args(["examples/bandit.py:make", "--arg", "steps=3", "--rtol", "1e-8"])
    >>> ns.target, ns.args, ns.rtol, ns.atol, ns.json
    ('examples/bandit.py:make', [('steps', 3)], 1e-08, None, False)
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Check a REINFORCE implementation exactly: run the episode built by MODULE:FACTORY once for every "
            "sequence of actions, and check that the expected gradient of its loss equals -grad J."
        ),
        epilog=(
            "FACTORY is a callable returning (episode, params), the arguments of "
            "reinforce_check.check_reinforce. Exit status: 0 passed, 1 gradient mismatch, "
            "2 the check could not be run (the last line on stderr says why)."
        ),
    )
    parser.add_argument(
        "target",
        metavar="MODULE:FACTORY",
        help="MODULE is a module name (mypkg.checks) or the path of a .py file (examples/bandit.py); "
        "FACTORY names a callable in it that returns (episode, params)",
    )
    parser.add_argument(
        "--arg",
        dest="args",
        metavar="KEY=VALUE",
        type=parse_factory_arg,
        action="append",
        default=[],
        help="keyword argument for FACTORY; VALUE is read as a Python literal, else kept as a string "
        "(repeat for several)",
    )

    check = parser.add_argument_group("check options (those of check_reinforce)")
    d = _DEFAULTS
    check.add_argument("--rtol", type=_tolerance, metavar="X", help=f"relative tolerance (default {d['rtol']:g})")
    check.add_argument("--atol", type=_tolerance, metavar="X", help=f"absolute tolerance (default {d['atol']:g})")
    check.add_argument(
        "--max-sequences",
        type=_integer(1),
        metavar="N",
        help=f"refuse episodes with more action sequences than this (default {d['max_sequences']:_})",
    )
    check.add_argument(
        "--batched",
        action="store_true",
        default=None,
        help="call episode(batch_size) and enumerate in few batched calls (default: episode())",
    )
    check.add_argument(
        "--finite-differences",
        choices=_FD_MODES,
        help=f"how to verify -grad J by central differences (default {d['finite_differences']})",
    )
    check.add_argument(
        "--fd-step", type=_positive_float, metavar="H", help=f"central-difference step (default {d['fd_step']:g})"
    )
    check.add_argument(
        "--fd-rtol",
        type=_tolerance,
        metavar="X",
        help=f"relative tolerance of the finite-difference comparison (default {d['fd_rtol']:g})",
    )
    check.add_argument(
        "--fd-atol",
        type=_tolerance,
        metavar="X",
        help=f"absolute tolerance of the finite-difference comparison (default {d['fd_atol']:g})",
    )
    check.add_argument(
        "--variance",
        action="store_true",
        default=None,
        help="also compute the exact variance of the single-episode gradient estimate",
    )
    check.add_argument(
        "--top-sequences",
        type=_integer(0),
        metavar="N",
        help=f"sequences to list as the largest contributors to a bias (default {d['top_sequences']})",
    )
    check.add_argument(
        "--seed",
        type=_integer(0),
        metavar="N",
        help=f"seed of the finite-difference directions (default {d['seed']})",
    )
    check.add_argument(
        "--promote",
        action=argparse.BooleanOptionalAction,
        help="run the episode in float64 (--promote), or in its parameters' own dtypes with tolerances raised "
        "to what they resolve (--no-promote) (default: promote when a checked parameter is float32, float16 or "
        "bfloat16)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (the report's figures, plus 'command' and 'message') and nothing else",
    )
    return parser


def _split_target(target: str) -> tuple[str, str]:
    module, sep, factory = target.rpartition(":")
    if not sep or not module or not factory:
        raise _UsageError(
            f"{target!r} is not MODULE:FACTORY; name the module (or .py file) and the callable that returns "
            "(episode, params), for example mypkg.checks:make or examples/bandit.py:make"
        )
    if not all(part.isidentifier() for part in factory.split(".")):
        raise _UsageError(f"FACTORY {factory!r} in {target!r} is not a Python name (or dotted attribute path)")
    return module, factory


def _looks_like_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _user_traceback(error: BaseException, skip: int = 1) -> str:
    """The traceback of ``error`` without this module's own ``skip`` outermost frames."""
    tb = error.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


class _UserCodeError(_UsageError):
    """The user's code (module import, factory or episode) raised; carries its traceback."""

    def __init__(self, message: str, error: BaseException, skip: int = 1) -> None:
        super().__init__(f"{message} raised {type(error).__name__}: {_one_line(str(error))}")
        self.traceback = _user_traceback(error, skip)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _import_file(path_text: str) -> ModuleType:
    path = Path(path_text)
    if not path.is_file():
        where = "" if path.is_absolute() else f" in {os.getcwd()}"
        raise _UsageError(
            f"file {path_text!r} not found{where} (a MODULE containing '/' or ending in .py is read as a file path)"
        )
    if path.suffix != ".py":
        raise _UsageError(f"{path_text!r} is not a .py file; give a Python file or a module name")
    path = path.resolve()
    # Like `python FILE`: the file's directory comes first on sys.path, so it can import its neighbours.
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = path.stem if path.stem.isidentifier() else "_reinforce_check_target"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) != str(path):
        name = f"_reinforce_check_target_{name}"  # never shadow an unrelated module that is already loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _UsageError(f"cannot load {path_text!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise _UserCodeError(f"importing {path_text}", error) from None
    return module


def _import_module(name: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise _UsageError(
            f"MODULE {name!r} is neither a dotted module name nor a path to a .py file "
            "(for example mypkg.checks or examples/bandit.py)"
        )
    # Like `python -m`: modules under the working directory can be named whatever launched the command.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == name or name.startswith(missing + "."):
            raise _UsageError(
                f"no module named {missing!r} (importing {name!r}); install it, run from the directory that "
                "contains it, add that directory to PYTHONPATH, or give the path of the .py file instead"
            ) from None
        raise _UserCodeError(f"importing {name}", error) from None
    except Exception as error:
        raise _UserCodeError(f"importing {name}", error) from None


def _load_factory(target: str) -> Callable[..., Any]:
    module_name, factory_name = _split_target(target)
    module = _import_file(module_name) if _looks_like_path(module_name) else _import_module(module_name)
    factory: Any = module
    for part in factory_name.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            hint = f"; callables there: {', '.join(public[:10])}" if public else ""
            raise _UsageError(f"{module_name} has no attribute {factory_name!r}{hint}") from None
    if not callable(factory):
        raise _UsageError(
            f"{target} is not callable (it is of type {type(factory).__name__}); FACTORY must name a function "
            "returning (episode, params)"
        )
    return factory  # type: ignore[no-any-return]


def _build(target: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none; the call below reports the problem
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            given = " ".join(f"--arg {k}={v!r}" for k, v in kwargs.items()) or "no --arg"
            raise _UsageError(
                f"the factory {target}{signature} cannot be called with {given} ({error}); give each of its "
                "keyword arguments as --arg KEY=VALUE, and no others"
            ) from None
    try:
        built = factory(**kwargs)
    except Exception as error:
        raise _UserCodeError(f"the factory {target}", error) from None
    if not isinstance(built, (tuple, list)) or len(built) != 2:
        what = (
            f"a {type(built).__name__} of length {len(built)}"
            if isinstance(built, (tuple, list))
            else f"an object of type {type(built).__name__}"
        )
        raise _UsageError(f"the factory {target} returned {what}; it must return a pair (episode, params)")
    episode, params = built
    if not callable(episode):
        raise _UsageError(
            f"the factory {target} returned ({type(episode).__name__}, ...); the first element must be the "
            "episode callable, the second the parameters to check"
        )
    return episode, params


def _raised_in(error: BaseException, objects: list[Any]) -> bool:
    """Whether a frame of ``error``'s traceback runs code from the file that defines one of ``objects``."""
    files = set()
    for obj in objects:
        try:
            files.add(os.path.realpath(inspect.getfile(inspect.unwrap(obj))))
        except (TypeError, OSError):  # builtins, partials and the like: no file to name
            try:
                files.add(os.path.realpath(inspect.getfile(type(obj))))
            except (TypeError, OSError):
                pass
    return any(os.path.realpath(frame.filename) in files for frame in traceback.extract_tb(error.__traceback__))


def _check_options(namespace: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(namespace, name) for name in _DEFAULTS if getattr(namespace, name) is not None}


def _run(namespace: argparse.Namespace, command: str, stdout: TextIO) -> int:
    kwargs: dict[str, Any] = {}
    for key, value in namespace.args:
        if key in kwargs:
            raise _UsageError(f"--arg {key}=... is given twice; give each factory argument once")
        kwargs[key] = value
    # With --json, stdout carries the JSON object alone: what the user's code prints goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if namespace.json else contextlib.nullcontext():
        return _check(namespace, kwargs, command, stdout)


def _check(namespace: argparse.Namespace, kwargs: dict[str, Any], command: str, stdout: TextIO) -> int:
    factory = _load_factory(namespace.target)
    episode, params = _build(namespace.target, factory, kwargs)

    from .check import check_reinforce
    from .errors import CheckUsageError, SequenceBudgetError
    from .report import ReinforceCheckError, format_report

    message: str | None = None
    try:
        report = check_reinforce(episode, params, **_check_options(namespace))
    except ReinforceCheckError as error:
        message, report = str(error), error.report
    except SequenceBudgetError as error:
        raise _UsageError(f"{_one_line(str(error))} (On the command line: --max-sequences N.)") from None
    except CheckUsageError as error:
        raise _UsageError(f"{type(error).__name__}: {_one_line(str(error))}") from None
    except Exception as error:
        culprit = "the episode" if _raised_in(error, [episode, factory]) else "the check"
        raise _UserCodeError(culprit, error) from None

    if namespace.json:
        data = report.to_dict() | {"command": command, "message": message}
        stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    else:
        if message is not None:
            stdout.write(message + "\n\n")
        stdout.write(format_report(report) + "\n")
    return EXIT_OK if report.ok else EXIT_MISMATCH


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``reinforce-check`` command line and return its exit status.

    Arguments:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        ``EXIT_OK`` (0) when the check passes, ``EXIT_MISMATCH`` (1) when the gradients
        disagree, ``EXIT_USAGE`` (2) when the check cannot be run; ``--help`` returns 0.
        The report goes to stdout; errors go to stderr, the last line reading
        ``reinforce-check: error: ...``.

    >>> main(["examples/bandit.py"])  # no ":FACTORY": the reason goes to stderr
    2
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    try:
        namespace = parser.parse_args(args)
    except SystemExit as exit_:  # --help, or an option error already reported by argparse
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command = shlex.join([PROG, *args])
    try:
        return _run(namespace, command, sys.stdout)
    except _UsageError as error:
        sys.stdout.flush()
        if isinstance(error, _UserCodeError):
            sys.stderr.write(error.traceback)
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return EXIT_USAGE
