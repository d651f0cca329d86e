"""Sweeps: many training runs, task x controller x preset x seed, as Ray tasks.

:func:`run_sweep` turns a :class:`SweepConfig` into one Ray task per run. Each run has its own
folder under the sweep's root, named after what it is::

    ROOT/{task}__{controller}__{preset}__seed{seed}/
        metrics.csv  checkpoint.pt  summary.json      (see rlntm_demo.training)

so a sweep can be stopped and started again at will, and runs trained by hand with
``rlntm-demo train --out ROOT/copy__direct__fast__seed0 ...`` join it. Per run:

* ``summary.json`` says it finished (``solved``, or ``max-updates`` with at least the requested
  updates): it is **skipped**;
* otherwise, a ``checkpoint.pt`` is there (interrupted, diverged, or finished with a smaller
  budget): the run is **resumed** exactly where it stopped, to the requested budget, with the
  sweep's overrides applied again (resuming is exact, so a diverged run diverges again unless the
  overrides change something, e.g. ``optimizer.learning_rate``);
* otherwise it is **trained** from the start.

A run that raises is reported as ``failed`` with its error and does not stop the others. Ray is
an optional dependency (``pip install "reinforce-check[sweep]"``), imported only when a sweep runs.
By default the sweep starts a local Ray with ``num_cpus`` CPUs and shuts it down at the end;
``address`` joins an existing cluster instead (its nodes need this package installed, and the
root must be a folder they all see).

>>> config = SweepConfig(tasks=["copy"], controllers=["direct", "lstm"], presets=["fast"], seeds=[0, 1], root="runs/x")
>>> [run.name for run in config.runs()][:2]
['copy__direct__fast__seed0', 'copy__direct__fast__seed1']
>>> SweepConfig(tasks=["copy"], controllers=["gru"], presets=["fast"])
Traceback (most recent call last):
...
ValueError: unknown controller 'gru'; choose from: lstm, direct, feedforward
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FINISHED", "STATUSES", "RunOutcome", "RunSpec", "SweepConfig", "execute_run", "require_ray", "run_folder_name",
           "run_sweep"]

FINISHED = ("solved", "max-updates")
"""Statuses of ``summary.json`` that mean the run ended on its own (its budget, or solving)."""
STATUSES = ("solved", "max-updates", "interrupted", "diverged", "skipped", "failed")
"""The statuses of a :class:`RunOutcome`."""


def run_folder_name(task: str, controller: str, preset: str, seed: int) -> str:
    """The folder name of a run under a sweep's root.

    >>> run_folder_name("copy", "direct", "fast", 3)
    'copy__direct__fast__seed3'
    """
    return f"{task}__{controller}__{preset}__seed{seed}"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what it trains, and where.

    >>> RunSpec("copy", "direct", "fast", 0).name
    'copy__direct__fast__seed0'
    """

    task: str
    """The task."""
    controller: str
    """The controller."""
    preset: str
    """The preset its config starts from."""
    seed: int
    """The run's seed."""

    @property
    def name(self) -> str:
        """The run's folder name, ``{task}__{controller}__{preset}__seed{seed}``."""
        return run_folder_name(self.task, self.controller, self.preset, self.seed)


@dataclass
class SweepConfig:
    """What a sweep trains, for how long, where, and on what Ray.

    Lists may be given as any iterable; they are stored as tuples. Everything is checked when the
    config is built, before any Ray starts: names against the valid choices, and the overrides by
    building every run's training config.

    >>> SweepConfig(tasks=["copy"], controllers=["direct"], presets=["fast"], overrides=["optimizer.rate=1"])
    Traceback (most recent call last):
    ...
    ValueError: unknown setting 'optimizer.rate'; optimizer has: name, learning_rate, momentum, clip_controller, clip_baseline
    """

    tasks: Sequence[str]
    """Task names (:data:`~rlntm_demo.tasks.TASKS`)."""
    controllers: Sequence[str]
    """Controllers: ``"lstm"``, ``"direct"``, ``"feedforward"``."""
    presets: Sequence[str] = ("paper",)
    """Presets of :mod:`rlntm_demo.presets`: ``"paper"``, ``"authors"``, ``"fast"``."""
    seeds: Sequence[int] = (0,)
    """Seeds; every (task, controller, preset) is trained once per seed."""
    max_updates: int | None = None
    """Update budget of every run; ``None``: the preset's (20,000). A finished run with fewer
    updates (and not solved) is resumed up to it."""
    root: str | Path = "runs/sweep"
    """The folder that holds one sub-folder per run (created if needed)."""
    overrides: Sequence[str] = ()
    """``section.field=value`` changes to every run's config (as ``rlntm-demo train --set``);
    applied again when a run is resumed."""
    num_cpus: int | None = None
    """CPUs of the local Ray the sweep starts; ``None``: all of this machine's. Not allowed with
    ``address`` (the cluster has its own)."""
    address: str | None = None
    """An existing Ray cluster to run on (``"auto"``, or ``"ray://host:10001"``); ``None``: start a
    local one and shut it down at the end."""
    threads_per_run: int = 1
    """Torch threads of each run, and the CPUs Ray reserves for it: ``num_cpus // threads_per_run``
    runs train at once."""

    def __post_init__(self) -> None:
        from .config import CONTROLLERS
        from .presets import PRESETS
        from .tasks import TASKS

        self.tasks = _names(self.tasks, "task", list(TASKS))
        self.controllers = _names(self.controllers, "controller", list(CONTROLLERS))
        self.presets = _names(self.presets, "preset", list(PRESETS))
        if isinstance(self.seeds, int):
            self.seeds = (self.seeds,)
        self.seeds = tuple(self.seeds)
        if not self.seeds:
            raise ValueError("give at least one seed")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds must be integers >= 0, not {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds are repeated: {list(self.seeds)}; each seed trains the same run")
        if isinstance(self.overrides, str):
            self.overrides = (self.overrides,)
        self.overrides = tuple(self.overrides)
        if self.max_updates is not None and self.max_updates < 1:
            raise ValueError(f"max_updates must be at least 1, not {self.max_updates}")
        if self.threads_per_run < 1:
            raise ValueError(f"threads_per_run must be at least 1, not {self.threads_per_run}")
        if self.num_cpus is not None:
            if self.address is not None:
                raise ValueError("num_cpus sizes the local Ray a sweep starts; leave it out with address "
                                 "(the cluster's own CPUs are used)")
            if self.num_cpus < self.threads_per_run:
                raise ValueError(f"num_cpus ({self.num_cpus}) must be at least threads_per_run "
                                 f"({self.threads_per_run}), or no run could start")
        self.root = Path(self.root)
        for run in self.runs():  # building each run's config checks the overrides against every preset
            self.budget(run)

    def runs(self) -> list[RunSpec]:
        """Every run, task by task, then controller, preset and seed."""
        return [RunSpec(*combination)
                for combination in itertools.product(self.tasks, self.controllers, self.presets, self.seeds)]

    def folder(self, run: RunSpec) -> Path:
        """The run's folder, ``root / run.name``."""
        return Path(self.root) / run.name

    def budget(self, run: RunSpec) -> int:
        """The number of updates the run is to reach (``max_updates``, or its config's)."""
        from .presets import make_config

        config = make_config(run.task, run.controller, run.preset, seed=run.seed, max_updates=self.max_updates,
                             overrides=self.overrides)
        return config.max_updates


def _names(values: Iterable[str], kind: str, valid: list[str]) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ValueError(f"give at least one {kind}; choose from: {', '.join(valid)}")
    for value in values:
        if value not in valid:
            raise ValueError(f"unknown {kind} {value!r}; choose from: {', '.join(valid)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{kind}s are repeated: {list(values)}")
    return values


@dataclass
class RunOutcome:
    """What became of one run of a sweep.

    >>> print(RunOutcome("copy__direct__fast__seed0", Path("runs/copy__direct__fast__seed0"), "failed", "boom"))
    copy__direct__fast__seed0: failed: boom
    """

    name: str
    """The run's folder name."""
    folder: Path
    """The run's folder."""
    status: str
    """``"solved"``, ``"max-updates"``, ``"interrupted"``, ``"diverged"`` (its ``summary.json``'s
    status), ``"skipped"`` (it had already finished), or ``"failed"`` (it raised)."""
    message: str | None = None
    """What happened: the error of a failed run, the advice of a diverged one, why one was skipped."""
    summary: dict[str, Any] | None = None
    """The run's summary (as in ``summary.json``); ``None`` when it failed."""
    seconds: float = 0.0
    """Wall-clock seconds the sweep spent on it (0 for a skipped run)."""

    @property
    def ok(self) -> bool:
        """Whether the run finished or had finished (solved or not)."""
        return self.status in (*FINISHED, "skipped")

    def __str__(self) -> str:
        if self.summary is not None and self.status != "failed":
            s = self.summary
            accuracy = ", ".join(f"{m}x {a:.0%}" for m, a in (s.get("greedy_exact_accuracy") or {}).items())
            detail = (f"{s.get('updates')} updates, level {s.get('level')}/{s.get('training_complexity')}, "
                      f"solved: {s.get('solved')}" + (f" (at update {s['updates_to_solve']})" if s.get("updates_to_solve") else "")
                      + (f"; greedy exact {accuracy}" if accuracy else ""))
            if self.status == "skipped":
                detail = f"{self.message}; {detail}"
            elif self.message:
                detail = f"{detail}; {self.message}"
            return f"{self.name}: {self.status}: {detail}"
        return f"{self.name}: {self.status}" + (f": {self.message}" if self.message else "")


def require_ray() -> Any:
    """Import and return the ``ray`` module.

    Raises:
        ImportError: Ray is not installed; the message says how to install it.
    """
    try:
        import ray
    except ImportError:
        raise ImportError('sweeps run on Ray, which is not installed: pip install "reinforce-check[sweep]" '
                          '(or pip install "ray>=2.9")') from None
    return ray


def _read_summary(folder: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``, or ``None`` when it is missing or unreadable (a half-written one)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _already_finished(summary: dict[str, Any], budget: int) -> bool:
    if summary.get("status") not in FINISHED:
        return False
    return summary.get("status") == "solved" or int(summary.get("updates") or 0) >= budget


def execute_run(run: RunSpec, folder: str | Path, budget: int, overrides: Sequence[str] = (),
                threads: int = 1) -> dict[str, Any]:
    """Skip, resume or train one run of a sweep, in this process (what each Ray task calls).

    Arguments:
        run: the run.
        folder: its folder.
        budget: the updates it is to reach.
        overrides: ``section.field=value`` changes to its config.
        threads: torch threads to use.

    Returns:
        ``{"status", "message", "summary"}``, the status one of :data:`STATUSES`; an error is
        returned as status ``"failed"`` with the message, not raised.
    """
    import torch

    from .checkpoints import CHECKPOINT_NAME
    from .presets import make_config
    from .training import resume, train

    folder = Path(folder)
    torch.set_num_threads(threads)
    try:
        summary = _read_summary(folder)
        if summary is not None:
            found = (summary.get("task"), summary.get("controller"), summary.get("preset"), summary.get("seed"))
            if found != (run.task, run.controller, run.preset, run.seed):
                task, controller, preset, seed = found
                other = (run_folder_name(task, controller, preset, seed)
                         if task and controller and preset and seed is not None else "of an incomplete summary")
                return {"status": "failed", "summary": None, "message": (
                    f"{str(folder)!r} holds the run {other}, not {run.name}; "
                    "move it to its own folder, or give the sweep another root")}
        if summary is not None and _already_finished(summary, budget):
            return {"status": "skipped", "summary": summary,
                    "message": f"already {summary['status']} (nothing to do)"}
        if (folder / CHECKPOINT_NAME).exists():
            summary = resume(folder, overrides=overrides, max_updates=budget, progress=False)
        else:
            config = make_config(run.task, run.controller, run.preset, seed=run.seed,
                                 max_updates=budget, overrides=overrides)
            summary = train(config, folder, progress=False)
    except Exception as error:  # a sweep reports any run's failure and goes on with the others
        return {"status": "failed", "summary": None, "message": f"{type(error).__name__}: {error}"}
    return {"status": summary["status"], "summary": summary, "message": summary.get("message")}


def run_sweep(config: SweepConfig, *, progress: bool = True,
              report: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Train every run of ``config`` as a Ray task, and return what became of each.

    Ray: if this process is already connected (``ray.is_initialized()``), that connection is used
    and left open; otherwise the sweep joins ``config.address`` or starts a local Ray with
    ``config.num_cpus`` CPUs, and disconnects (stopping the local Ray) at the end, even on an error.

    Arguments:
        config: the sweep.
        progress: print a line per run as it finishes (in order of finishing).
        report: also called with each run's outcome as it finishes.

    Returns:
        One :class:`RunOutcome` per run, in the order of :meth:`SweepConfig.runs`. On Ctrl-C the
        runs still going are cancelled and returned as ``"interrupted"``; their checkpoints are
        kept, so running the sweep again continues them.

    Raises:
        ImportError: Ray is not installed (the message says how to install it).
        ConnectionError: ``config.address`` cannot be reached.

    For example (a local Ray with 2 CPUs, two runs at a time)::

        config = SweepConfig(tasks=["copy", "reverse"], controllers=["direct"], presets=["fast"],
                             seeds=[0, 1, 2], max_updates=2000, root="runs/table4", num_cpus=2)
        failed = [o for o in run_sweep(config) if not o.ok]
    """
    ray = require_ray()
    runs = config.runs()
    outcomes: dict[RunSpec, RunOutcome] = {}

    def finish(outcome: RunOutcome, run: RunSpec) -> None:
        outcomes[run] = outcome
        if progress:
            print(f"[{len(outcomes)}/{len(runs)}] {outcome}", flush=True)
        if report is not None:
            report(outcome)

    owns_ray = not ray.is_initialized()
    if owns_ray:
        import logging

        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if config.address is not None:
            ray.init(address=config.address, **options)
        else:
            ray.init(num_cpus=config.num_cpus, **options)
    try:
        Path(config.root).mkdir(parents=True, exist_ok=True)
        remote = ray.remote(num_cpus=config.threads_per_run, max_retries=0)(execute_run)
        pending: dict[Any, tuple[RunSpec, float]] = {}
        for run in runs:
            # Absolute, because Ray workers need not share this process's working directory.
            ref = remote.remote(run, str(config.folder(run).absolute()), config.budget(run), list(config.overrides),
                                config.threads_per_run)
            pending[ref] = (run, time.perf_counter())
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    run, started = pending.pop(ref)
                    finish(_outcome(ray, ref, run, config.folder(run), time.perf_counter() - started), run)
        except KeyboardInterrupt:
            # Cancelling asks each run to stop; a run that is finishing its update or its final
            # evaluation gets a moment to write its summary, so that the report says what is on disk.
            for ref in pending:
                ray.cancel(ref)
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_CANCEL_GRACE_SECONDS)
            for ref in done:
                run, started = pending.pop(ref)
                finish(_outcome(ray, ref, run, config.folder(run), time.perf_counter() - started), run)
            for run, started in pending.values():
                finish(RunOutcome(run.name, config.folder(run), "interrupted", _INTERRUPTED, None,
                                  time.perf_counter() - started), run)
    finally:
        if owns_ray:
            ray.shutdown()
    return [outcomes[run] for run in runs]


_CANCEL_GRACE_SECONDS = 10.0
"""After Ctrl-C, how long the sweep waits for the cancelled runs to report."""
_INTERRUPTED = "the sweep was interrupted; run it again to continue from the last checkpoint"


def _outcome(ray: Any, ref: Any, run: RunSpec, folder: Path, seconds: float) -> RunOutcome:
    from ray.exceptions import TaskCancelledError

    try:
        result = ray.get(ref)
    except TaskCancelledError:
        return RunOutcome(run.name, folder, "interrupted", _INTERRUPTED, None, seconds)
    except Exception as error:  # the worker died (out of memory, killed), or Ray lost the task
        return RunOutcome(run.name, folder, "failed", f"{type(error).__name__}: {error}", None, seconds)
    status = result["status"]
    return RunOutcome(run.name, folder, status, result["message"], result["summary"],
                      0.0 if status == "skipped" else seconds)
