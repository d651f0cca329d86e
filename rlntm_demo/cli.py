"""The command line: ``rlntm-demo COMMAND [options]`` (also ``python -m rlntm_demo``).

Commands:

``check --task TASK --controller {lstm,direct,feedforward}``
    Check the RL-NTM's gradient exactly on a tiny instance of the task (see
    :mod:`rlntm_demo.check`) and print the two reports: (a) the policy, (b) the baseline LSTM.

Exit status: ``0`` every check passed, ``1`` a gradient disagrees, ``2`` the command could not be
run (an unknown task, controller or option, or a check too large to enumerate); the reason goes to
stderr and names the valid choices.

:func:`make_parser` builds the parser and :func:`main` runs a command line; importing this
module does neither. Further commands (train, eval, trace, plot, bench) add a subparser each.

>>> make_parser().parse_args(["check", "--task", "copy", "--controller", "lstm"]).command
'check'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import BASELINES, CONTROLLERS

__all__ = ["EXIT_MISMATCH", "EXIT_OK", "EXIT_USAGE", "PROG", "main", "make_parser"]

PROG = "rlntm-demo"
EXIT_OK = 0
"""Every check passed."""
EXIT_MISMATCH = 1
"""A gradient differs from the exact one."""
EXIT_USAGE = 2
"""The command could not be run: stderr says what to change."""


def _task_names() -> list[str]:
    from .tasks import TASKS

    return list(TASKS)


def _bug_names() -> list[str]:
    from .check import BUGS

    return list(BUGS)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rlntm-demo``, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Reinforcement Learning Neural Turing Machine (Zaremba & Sutskever), checked exactly.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="check the model's gradient exactly on a tiny instance of a task",
        description=(
            "Enumerate every action sequence of a tiny float64 instance of TASK, with every component on "
            "(memory where the task has it, direct access if chosen, both baselines, reward-to-go), and "
            "check (a) the policy gradient and (b) the baseline LSTM's gradient against the exact ones. "
            "Exit status 0: passed; 1: a gradient disagrees; 2: the check could not be run."
        ),
    )
    check.add_argument("--task", required=True, choices=_task_names(), metavar="TASK",
                       help="one of: %(choices)s" % {"choices": ", ".join(_task_names())})
    check.add_argument("--controller", required=True, choices=CONTROLLERS, help="the controller")
    check.add_argument("--seed", type=int, default=0, help="draws the instance and the weights (default: 0)")
    check.add_argument("--complexity", type=int, default=None,
                       help="complexity of the instance (default: per task, 1 or 2)")
    check.add_argument("--slack", type=int, default=None,
                       help="steps beyond the number of targets (default: per task, 1 or 2)")
    check.add_argument("--num-symbols", type=int, default=2, help="data symbols of the instance (default: 2)")
    check.add_argument("--baseline", choices=BASELINES, default="both", help="baselines (default: both)")
    check.add_argument("--bug", choices=_bug_names(), default=None, metavar="BUG",
                       help="switch on a deliberate bug, to see the check catch it: %s" % ", ".join(_bug_names()))
    check.add_argument("--variance", action="store_true", help="also compute the exact variance of the estimator")
    check.add_argument("--max-sequences", type=int, default=20_000,
                       help="give up past this many action sequences (default: 20000)")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def _run_check(args: argparse.Namespace) -> int:
    from reinforce_check import CheckUsageError

    from .check import check_model

    try:
        reports = check_model(
            args.task,
            args.controller,
            seed=args.seed,
            complexity=args.complexity,
            slack=args.slack,
            num_symbols=args.num_symbols,
            baseline=args.baseline,
            bug=args.bug,
            variance=args.variance,
            max_sequences=args.max_sequences,
        )
    except (CheckUsageError, ValueError) as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return EXIT_USAGE
    if args.json:
        print(json.dumps([report.to_dict() for report in reports], indent=2))
    else:
        titles = ["(a) policy parameters", "(b) baseline LSTM parameters"]
        for title, report in zip(titles, reports):
            print(f"== {title} ==")
            print(report)
            print()
        verdict = "passed" if all(r.ok for r in reports) else "FAILED"
        print(f"rlntm-demo check {args.task} / {args.controller}: {verdict}")
    return EXIT_OK if all(r.ok for r in reports) else EXIT_MISMATCH


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rlntm-demo`` command line and return its exit status.

    Arguments:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 when every check passes, 1 when a gradient disagrees, 2 when the command cannot be run
        (argparse's own usage errors included); ``--help`` returns 0.

    >>> main(["check", "--task", "multiply", "--controller", "lstm"])  # the message goes to stderr
    2
    """
    parser = make_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help, or a usage error argparse has already reported
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command == "check":
        return _run_check(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse refuses first
    return EXIT_USAGE  # pragma: no cover
