"""The command line: ``rlntm-demo COMMAND [options]`` (also ``python -m rlntm_demo``).

Commands:

``check --task TASK --controller {lstm,direct,feedforward}``
    Check the RL-NTM's gradient exactly on a tiny instance of the task (see
    :mod:`rlntm_demo.check`) and print the two reports: (a) the policy, (b) the baseline LSTM.
``train --task TASK --controller CTL --preset {paper,authors,fast} --seed N --out DIR``
    Train (see :mod:`rlntm_demo.training`), with a progress bar; writes ``DIR/metrics.csv``,
    ``DIR/checkpoint.pt`` and ``DIR/summary.json``. ``--resume`` continues ``DIR``'s run.
``eval RUN``
    Greedy accuracy of a trained run at multiples of its training length.
``trace RUN``
    What a trained run does on one fresh instance, as text and as a Figure 7-style PNG.
``plot RUN [RUN ...] --out PNG``
    Learning curves from the runs' ``metrics.csv``.
``build``
    Compile the native step loop now (otherwise the first model run compiles it; see
    :mod:`rlntm_demo.fast.native`) and print where it is.
``bench``
    Seconds per update against a bare LSTM measured in the same run (see :mod:`rlntm_demo.bench`).
``sweep --tasks T [T ...] --controllers C [C ...] --presets P [P ...] --seeds N [N ...] --out ROOT``
    Train every combination as Ray tasks (see :mod:`rlntm_demo.sweep`), one folder per run,
    ``ROOT/{task}__{controller}__{preset}__seed{seed}``; finished runs are skipped and unfinished
    ones resumed, so the same command continues a stopped sweep. Needs ``pip install
    "reinforce-check[sweep]"``.
``results ROOT [ROOT ...] --out DIR``
    One row per run (``DIR/table4.csv``), a summary per task, controller and preset
    (``DIR/summary.csv`` and the RST table ``DIR/summary.rst``), and learning curves per task and
    preset (``DIR/curves_{task}_{preset}.png``); see :mod:`rlntm_demo.results`.

Exit status: ``0`` success (every check passed; a training run, or every run of a sweep, that
finished, solved or not); ``1`` a gradient disagrees, or training diverged (a sweep: some run
diverged or failed), or the native step loop could not be built; ``2`` the command could not be run (an unknown
task, controller, preset, setting or option, a missing run, a check too large to enumerate); the
reason goes to stderr and names the valid choices; ``130`` training was interrupted with Ctrl-C
(after saving its checkpoint).

:func:`make_parser` builds the parser and :func:`main` runs a command line; importing this
module does neither: the commands import what they need when they run.

>>> make_parser().parse_args(["check", "--task", "copy", "--controller", "lstm"]).command
'check'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import ADJACENT_MEMORY, BASELINES, CONTROLLERS, DIRECT_ACCESS, ENTROPY_MODES, STEP_IMPLS

if TYPE_CHECKING:
    from .training import Trainer

__all__ = ["EXIT_INTERRUPTED", "EXIT_MISMATCH", "EXIT_OK", "EXIT_USAGE", "PROG", "main", "make_parser"]

PROG = "rlntm-demo"
EXIT_OK = 0
"""Every check passed."""
EXIT_MISMATCH = 1
"""A gradient differs from the exact one."""
EXIT_USAGE = 2
"""The command could not be run: stderr says what to change."""
EXIT_INTERRUPTED = 130
"""Training was interrupted (Ctrl-C) after saving its checkpoint; ``--resume`` continues it."""
PRESET_NAMES = ("paper", "authors", "fast")
"""The presets of :mod:`rlntm_demo.presets` (listed here so that parsing imports no torch)."""


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
    check.add_argument("--rollouts", type=int, default=1,
                       help="rollouts per episode; 2 or more checks the fast preset's leave-one-out baseline "
                            "(sequential mode; keep --complexity 1)")
    check.add_argument("--circular-input", action="store_true",
                       help="the input head wraps around, as model.circular_input does (the fast and authors presets)")
    check.add_argument("--entropy-bonus", type=float, default=0.0, metavar="BETA",
                       help="add the entropy bonus -BETA log p(a_t) to every step's reward, as objective.entropy_bonus "
                            "does in training (default: 0)")
    check.add_argument("--entropy-mode", choices=ENTROPY_MODES, default="returns",
                       help="how the entropy bonus enters the loss, as objective.entropy_mode: through the returns "
                            "(default) or as a per-step entropy term")
    check.add_argument("--shortcut-scale", type=float, default=None, metavar="S",
                       help="direct access: learnable positive scales, starting at S, on the shortcuts into the "
                            "prediction logits, as model.shortcut_scale (the fast preset: 5)")
    check.add_argument("--adjacent-memory", choices=ADJACENT_MEMORY, default="open",
                       help="direct access: the adjacent-memory gates, as model.adjacent_memory (default: open)")
    check.add_argument("--step-impl", choices=STEP_IMPLS, default="fast",
                       help="the step checked, as model.step_impl: the fast loop (default) or the reference step")
    check.add_argument("--direct-access", choices=DIRECT_ACCESS, default="paper",
                       help="direct access: the paper's five gates (default) or the authors' gates over the read "
                            "window, as model.direct_access (needs --adjacent-memory off)")
    check.add_argument("--input-start-marker", action="store_true",
                       help="a visible left end of the input tape, as model.input_start_marker")
    check.add_argument("--memory-start-marker", action="store_true",
                       help="the memory head's first cell starts as all ones, as model.memory_start_marker "
                            "(the authors' initial memory; no preset sets it)")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")

    train = commands.add_parser(
        "train",
        help="train the RL-NTM on a task with the curriculum",
        description=(
            "Train on TASK with the curriculum of the paper, showing a progress bar, and write OUT/metrics.csv, "
            "OUT/checkpoint.pt and OUT/summary.json. Settings: the preset, then --config FILE, then each --set, "
            "then the flags. --resume continues the run in OUT exactly where its checkpoint left it."
        ),
    )
    train.add_argument("--task", choices=_task_names(), metavar="TASK",
                       help="one of: %s (required unless --resume)" % ", ".join(_task_names()))
    train.add_argument("--controller", choices=CONTROLLERS, help="the controller (required unless --resume)")
    train.add_argument("--preset", choices=PRESET_NAMES, default="paper", help="settings to start from (default: paper)")
    train.add_argument("--seed", type=int, default=0, help="seeds weights, instances and actions (default: 0)")
    train.add_argument("--max-updates", type=int, default=None, help="update budget (default: 20000)")
    train.add_argument("--out", required=True, help="the run's output folder")
    train.add_argument("--config", default=None, metavar="FILE", help="a JSON or TOML file of settings")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                       help="change one setting, e.g. --set optimizer.learning_rate=0.01 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")

    evaluate = commands.add_parser("eval", help="greedy accuracy of a trained run at longer lengths",
                                   description="Run the greedy policy of RUN's checkpoint on fresh instances at "
                                               "multiples of its training length.")
    evaluate.add_argument("run", metavar="RUN", help="the run's folder (or its checkpoint.pt)")
    evaluate.add_argument("--multipliers", type=int, nargs="+", default=None, metavar="M",
                          help="test lengths as multiples of the training length (default: 1 2 5 10)")
    evaluate.add_argument("--instances", type=int, default=None, help="fresh instances per length (default: 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the instances (default: 0)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    trace = commands.add_parser("trace", help="what a trained run does on one instance (text and PNG)",
                                description="Run RUN's model on one fresh instance and print the trace; "
                                            "also draw it the way Figure 7 of the paper does.")
    trace.add_argument("run", metavar="RUN", help="the run's folder (or its checkpoint.pt)")
    trace.add_argument("--complexity", type=int, default=None, help="the instance's complexity (default: 10, or less)")
    trace.add_argument("--seed", type=int, default=0, help="draws the instance (default: 0)")
    trace.add_argument("--sampled", action="store_true", help="sample the actions instead of taking the most probable")
    trace.add_argument("--out", default=None, metavar="PNG", help="the figure (default: RUN/trace.png)")

    plot = commands.add_parser("plot", help="learning curves of runs",
                               description="Draw the curriculum level and the sampled error against updates.")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    plot.add_argument("--out", required=True, metavar="PNG", help="the figure")
    plot.add_argument("--title", default=None, help="a title")

    commands.add_parser("build", help="compile the native step loop now (else the first run does)",
                        description="Compile the C++ step loop into $TORCH_EXTENSIONS_DIR (by default "
                                    "~/.cache/torch_extensions) unless it is there already, and print where it is. "
                                    "Exit status 1, with what failed on stderr, where it cannot be built.")

    bench = commands.add_parser("bench", help="seconds per update against a bare LSTM, same run",
                                description="Time one training update (batch 200, ForwardReverse at its top "
                                            "complexity, direct access by default) and a bare LSTM of the same size "
                                            "unrolled over as many steps, forward and backward, in the same process.")
    bench.add_argument("--task", choices=_task_names(), default="forward-reverse", metavar="TASK", help="the task")
    bench.add_argument("--controller", choices=CONTROLLERS, default="direct", help="the controller")
    bench.add_argument("--batch-size", type=int, default=200, help="episodes per update (default: 200)")
    bench.add_argument("--repeats", type=int, default=None, help="timed repeats of each")
    bench.add_argument("--json", action="store_true", help="print one JSON line")

    sweep = commands.add_parser(
        "sweep", help="train task x controller x preset x seed as Ray tasks",
        description=(
            "Train every combination of the tasks, controllers, presets and seeds as Ray tasks, each in "
            "ROOT/{task}__{controller}__{preset}__seed{seed}. A run that already finished is skipped, one with "
            "a checkpoint is resumed, so running the same command again continues the sweep. Starts a local Ray "
            "(and stops it at the end) unless --address names a cluster. Needs Ray: "
            'pip install "reinforce-check[sweep]". Exit status 0: every run finished, solved or not; 1: some run '
            "failed or diverged; 2: the sweep could not be run."
        ),
    )
    sweep.add_argument("--tasks", nargs="+", required=True, choices=_task_names(), metavar="TASK",
                       help="one or more of: %s" % ", ".join(_task_names()))
    sweep.add_argument("--controllers", nargs="+", required=True, choices=CONTROLLERS, metavar="CONTROLLER",
                       help="one or more of: %s" % ", ".join(CONTROLLERS))
    sweep.add_argument("--presets", nargs="+", choices=PRESET_NAMES, default=["paper"], metavar="PRESET",
                       help="one or more of: %s (default: paper)" % ", ".join(PRESET_NAMES))
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N", help="seeds (default: 0)")
    sweep.add_argument("--max-updates", type=int, default=None, help="update budget of each run (default: 20000)")
    sweep.add_argument("--out", required=True, metavar="ROOT", help="the folder of the run folders")
    sweep.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                       help="change one setting of every run, e.g. --set evaluation.instances=200 (repeatable)")
    sweep.add_argument("--address", default=None,
                       help="an existing Ray cluster (e.g. auto, or ray://HOST:10001; default: start a local one)")
    sweep.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs of the local Ray (default: all of this machine's)")
    sweep.add_argument("--threads-per-run", type=int, default=1,
                       help="torch threads, and CPUs reserved, per run (default: 1)")

    results = commands.add_parser(
        "results", help="tables and learning curves of a sweep's runs",
        description=(
            "Collect the runs under each ROOT and write OUT/table4.csv (one row per run), OUT/summary.csv and "
            "OUT/summary.rst (per task, controller and preset: success rate, median updates to solve over the "
            "solved runs, median greedy exact accuracy at 1x, 2x, 5x and 10x the training length), and "
            "OUT/curves_{task}_{preset}.png; print the summary."
        ),
    )
    results.add_argument("roots", nargs="+", metavar="ROOT", help="folders of run folders (or run folders)")
    results.add_argument("--out", required=True, metavar="DIR", help="where to write the tables and figures")
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
            rollouts=args.rollouts,
            entropy_bonus=args.entropy_bonus,
            entropy_mode=args.entropy_mode,
            circular_input=args.circular_input,
            shortcut_scale=args.shortcut_scale,
            adjacent_memory=args.adjacent_memory,
            input_start_marker=args.input_start_marker,
            memory_start_marker=args.memory_start_marker,
            direct_access=args.direct_access,
            step_impl=args.step_impl,
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


def _fail(message: object) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


def _run_train(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .presets import make_config
    from .training import RunExistsError, resume, train

    try:
        if args.resume:
            if args.task or args.controller or args.config:
                return _fail("--resume takes the task, controller and settings from the checkpoint; "
                             "leave out --task, --controller and --config (use --set to change a setting)")
            summary = resume(args.out, overrides=args.overrides, max_updates=args.max_updates, progress=not args.no_progress)
        else:
            if args.task is None or args.controller is None:
                return _fail("train needs --task and --controller (or --resume to continue the run in --out)")
            overrides = list(args.overrides) + (["tensorboard=true"] if args.tensorboard else [])
            config = make_config(args.task, args.controller, args.preset, seed=args.seed,
                                 max_updates=args.max_updates, file=args.config, overrides=overrides)
            if args.print_config:
                print(json.dumps(config.to_dict(), indent=2))
                return EXIT_OK
            summary = train(config, args.out, progress=not args.no_progress)
    except (CheckpointError, RunExistsError, ValueError, ImportError) as error:
        return _fail(error)
    accuracy = ", ".join(f"{m}x {a:.1%}" for m, a in summary["greedy_exact_accuracy"].items()) or "not evaluated"
    print(
        f"{summary['task']} / {summary['controller']} ({summary['preset']}, seed {summary['seed']}): {summary['status']} "
        f"after {summary['updates']} updates, level {summary['level']}/{summary['training_complexity']}, "
        f"solved: {summary['solved']} (at update {summary['updates_to_solve']}); greedy exact accuracy: {accuracy}; "
        f"{summary['seconds']:.0f} s ({summary['seconds_per_update'] * 1000:.0f} ms/update). Wrote {args.out}/summary.json"
    )
    if summary["status"] == "diverged":
        sys.stderr.write(f"{PROG}: {summary['message']}\n")
        return EXIT_MISMATCH
    return EXIT_INTERRUPTED if summary["status"] == "interrupted" else EXIT_OK


def _load_trainer(run: str) -> Trainer:
    from .checkpoints import load_checkpoint
    from .training import Trainer

    return Trainer.from_checkpoint(load_checkpoint(run))


def _run_eval(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError

    try:
        trainer = _load_trainer(args.run)
        with trainer.selected_parameters():
            results = trainer.evaluate(multipliers=args.multipliers, instances=args.instances, seed=args.seed)
    except (CheckpointError, ValueError) as error:
        return _fail(error)
    if args.json:
        print(json.dumps({"update": trainer.evaluated_update, "level": trainer.curriculum.level,
                          "results": [r.to_dict() for r in results.values()]}))
        return EXIT_OK
    config = trainer.config
    print(f"{config.task} / {config.controller}, update {trainer.evaluated_update}, level {trainer.curriculum.level}/"
          f"{config.curriculum.max_level}; greedy decoding on fresh instances")
    print(f"{'length':>8} {'complexity':>10} {'instances':>9} {'exact':>8} {'per symbol':>10}")
    for r in results.values():
        print(f"{str(r.multiplier) + 'x':>8} {r.complexity:>10} {r.instances:>9} {r.exact:>8.1%} {r.per_symbol:>10.1%}")
    return EXIT_OK


def _run_trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .checkpoints import CheckpointError
    from .traces import render_figure, render_text

    try:
        trainer = _load_trainer(args.run)
        config = trainer.config
        complexity = args.complexity or min(10, config.curriculum.max_level)
        if complexity < 1:
            raise ValueError(f"--complexity must be at least 1, not {complexity}")
        batch = trainer.task.sample(complexity, 1, torch.Generator().manual_seed(args.seed))
        with torch.random.fork_rng(devices=[]), trainer.selected_parameters():
            torch.manual_seed(args.seed)
            trace = trainer.model.trace(batch, greedy=not args.sampled)
        run = Path(args.run)
        out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "trace.png"
        title = f"{config.task} / {config.controller}, update {trainer.evaluated_update}, complexity {complexity}"
        render_figure(trace, out, title=title)
    except (CheckpointError, ValueError) as error:
        return _fail(error)
    print(render_text(trace))
    print(f"wrote {out}")
    return EXIT_OK


def _run_plot(args: argparse.Namespace) -> int:
    from .plots import plot_learning_curves

    try:
        path = plot_learning_curves(args.runs, args.out, title=args.title)
    except ValueError as error:
        return _fail(error)
    print(f"wrote {path}")
    return EXIT_OK


def _run_build(args: argparse.Namespace) -> int:
    from .fast.native import BuildError, build

    try:
        module = build()
    except BuildError as error:
        sys.stderr.write(f"{PROG}: the native step loop could not be built: {error}\n")
        return EXIT_MISMATCH
    print(f"native step loop: {module.__file__}")
    return EXIT_OK


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark

    options = {"task": args.task, "controller": args.controller, "batch_size": args.batch_size}
    if args.repeats is not None:
        options["repeats"] = args.repeats
    try:
        result = run_benchmark(**options)
    except ValueError as error:
        return _fail(error)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']} / {result['controller']}, batch {result['batch_size']}, {result['steps']} steps: "
              f"{result['seconds_per_update'] * 1000:.1f} ms per update, bare LSTM {result['bare_lstm_seconds'] * 1000:.1f} ms, "
              f"ratio {result['ratio']:.2f} (rollout {result['rollout_seconds'] * 1000:.1f} ms, of which sampling "
              f"{result['sampling_seconds'] * 1000:.1f} ms; losses {result['loss_seconds'] * 1000:.1f} ms; backward and "
              f"step {result['backward_seconds'] * 1000:.1f} ms; {result['step_loop']} step loop)")
    return EXIT_OK


def _run_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepConfig, run_sweep

    try:
        config = SweepConfig(tasks=args.tasks, controllers=args.controllers, presets=args.presets, seeds=args.seeds,
                             max_updates=args.max_updates, root=args.out, overrides=args.overrides,
                             num_cpus=args.num_cpus, address=args.address, threads_per_run=args.threads_per_run)
        outcomes = run_sweep(config)
    except (ValueError, ImportError, ConnectionError) as error:
        return _fail(error)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print(f"sweep: {len(outcomes)} runs in {args.out}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for outcome in outcomes:
        if outcome.status in ("failed", "diverged"):
            sys.stderr.write(f"{PROG}: {outcome.name} {outcome.status} ({outcome.folder}): {outcome.message}\n")
    if any(outcome.status in ("failed", "diverged") for outcome in outcomes):
        return EXIT_MISMATCH
    return EXIT_INTERRUPTED if any(outcome.status == "interrupted" for outcome in outcomes) else EXIT_OK


def _run_results(args: argparse.Namespace) -> int:
    from .results import format_summary, write_results

    try:
        written = write_results(args.roots, args.out)
    except ValueError as error:
        return _fail(error)
    print(format_summary(written["summary"]))
    print(f"{len(written['rows'])} runs; median updates to solve is over the solved runs only")
    print("wrote " + ", ".join(str(path) for path in written["files"]))
    return EXIT_OK


_COMMANDS = {"check": _run_check, "train": _run_train, "eval": _run_eval, "trace": _run_trace,
             "plot": _run_plot, "build": _run_build, "bench": _run_bench, "sweep": _run_sweep, "results": _run_results}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rlntm-demo`` command line and return its exit status.

    Arguments:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status (see the module docstring); argparse's own usage errors give 2 and
        ``--help`` gives 0.

    >>> main(["check", "--task", "multiply", "--controller", "lstm"])  # the message goes to stderr
    2
    """
    parser = make_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help, or a usage error argparse has already reported
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    return _COMMANDS[args.command](args)
