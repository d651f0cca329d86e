"""Results of many runs: one row per run, a summary per configuration, and learning curves.

:func:`collect` reads the run folders under one or more roots (as a sweep writes them,
``ROOT/{task}__{controller}__{preset}__seed{seed}/``, or any folder holding a run) into rows of
:data:`RUN_COLUMNS`; :func:`summarize` groups them by (task, controller, preset) into rows of
:data:`SUMMARY_COLUMNS`; :func:`write_csv`, :func:`write_rst` and :func:`plot_curves` write them;
:func:`write_results` does all of it into one folder::

    DIR/table4.csv                    one row per run
    DIR/summary.csv, DIR/summary.rst  one row per (task, controller, preset); the .rst is a
                                      list-table for Sphinx's ``.. include::``
    DIR/curves_{task}_{preset}.png    learning curves, one line per controller x seed

A run whose ``summary.json`` is missing (still training, or killed) is read from its
``metrics.csv`` and listed with status ``"unfinished"``; it counts in no success rate.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     run = Path(tmp) / "copy__direct__fast__seed0"
...     run.mkdir()
...     _ = (run / "summary.json").write_text(json.dumps({"task": "copy", "controller": "direct", "preset": "fast",
...         "seed": 0, "status": "solved", "solved": True, "updates_to_solve": 250, "updates": 250,
...         "greedy_exact_accuracy": {"1": 1.0, "2": 1.0}}))
...     rows = collect([tmp])
>>> rows[0]["solved"], rows[0]["updates_to_solve"], rows[0]["greedy_exact_2x"], rows[0]["greedy_exact_5x"]
(True, 250, 1.0, None)
>>> summary = summarize(rows)
>>> summary[0]["success_rate"], summary[0]["median_updates_to_solve"]
(1.0, 250.0)
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MULTIPLIERS",
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "collect",
    "format_rst",
    "format_summary",
    "plot_curves",
    "summarize",
    "write_csv",
    "write_results",
    "write_rst",
]

MULTIPLIERS = (1, 2, 5, 10)
"""Test lengths reported, as multiples of the training length."""

RUN_COLUMNS = (
    "task", "controller", "preset", "seed", "solved", "updates_to_solve",
    "greedy_exact_1x", "greedy_exact_2x", "greedy_exact_5x", "seconds",
    "greedy_exact_10x", "status", "updates", "evaluated_update", "level", "training_complexity", "episodes",
    "seconds_per_update", "commits",
)
"""The columns of a run's row: what it trained; whether it was solved and at which update; the
greedy exact-sequence accuracy of its final evaluation at 1, 2, 5 and 10 times the training length
(empty where not evaluated); its training seconds; then its status (``summary.json``'s, or
``"unfinished"``), updates made, the update whose parameters the final evaluation used (the
selected ones under model selection, ``evaluation.select_on``; else the last), curriculum level
reached, training complexity, episodes, seconds per update, and the commits whose code trained it
(short hashes, space-separated; empty for runs made before they were recorded)."""

SUMMARY_COLUMNS = (
    "task", "controller", "preset", "runs", "unfinished", "solved", "success_rate", "median_updates_to_solve",
    "median_greedy_exact_1x", "median_greedy_exact_2x", "median_greedy_exact_5x", "median_greedy_exact_10x",
)
"""The columns of a configuration's row: the runs found, how many have not finished (no final
status, or interrupted), how many were solved, the success rate ``solved / (runs - unfinished)``,
the median updates to solve **over the solved runs only**, and the median greedy exact accuracy at
each test length over the runs that were evaluated (empty where none was)."""

_NAME = re.compile(r"^(?P<task>.+)__(?P<controller>[^_]+)__(?P<preset>[^_]+)__seed(?P<seed>\d+)$")
_UNFINISHED = ("unfinished", "interrupted")


def _run_folders(root: Path) -> list[Path]:
    """``root`` itself if it holds a run, else its sub-folders that do."""
    def holds_run(folder: Path) -> bool:
        return any((folder / name).is_file() for name in ("summary.json", "metrics.csv", "checkpoint.pt"))

    if holds_run(root):
        return [root]
    return sorted(folder for folder in root.iterdir() if folder.is_dir() and holds_run(folder))


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    """The paper's order of tasks and controllers, then the presets' order, then the seed."""
    from .config import CONTROLLERS
    from .presets import PRESETS
    from .tasks import TASKS

    def rank(value: Any, names: Sequence[str]) -> tuple[int, str]:
        return (list(names).index(value), "") if value in names else (len(names), str(value))

    return (rank(row["task"], list(TASKS)), rank(row["controller"], CONTROLLERS),
            rank(row["preset"], list(PRESETS)), row["seed"] if isinstance(row["seed"], int) else -1)


def _row_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    exact = summary.get("greedy_exact_accuracy") or {}
    row = {
        "task": summary.get("task"),
        "controller": summary.get("controller"),
        "preset": summary.get("preset"),
        "seed": summary.get("seed"),
        "solved": bool(summary.get("solved")),
        "updates_to_solve": summary.get("updates_to_solve"),
        "seconds": summary.get("seconds"),
        "status": summary.get("status"),
    }
    for multiplier in MULTIPLIERS:
        row[f"greedy_exact_{multiplier}x"] = exact.get(str(multiplier))
    for key in ("updates", "level", "training_complexity", "episodes", "seconds_per_update"):
        row[key] = summary.get(key)
    # Summaries from before model selection evaluated the last parameters.
    row["evaluated_update"] = summary.get("evaluated_update", summary.get("updates"))
    row["commits"] = " ".join(commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
                              for commit in summary.get("commits") or ()) or None
    return row


def _row_from_metrics(folder: Path) -> dict[str, Any]:
    """A run without ``summary.json``: what its name and its ``metrics.csv`` say."""
    from .metrics import read_metrics
    from .tasks import TASKS

    match = _NAME.match(folder.name)
    names = match.groupdict() if match else {"task": None, "controller": None, "preset": None, "seed": None}
    metrics = read_metrics(folder) if (folder / "metrics.csv").is_file() else []
    last = metrics[-1] if metrics else {}

    def last_int(key: str) -> int | None:
        value = last.get(key)
        return None if value is None else int(value)

    seconds = sum(m.get("seconds") or 0.0 for m in metrics)
    updates = last_int("update") or 0
    row: dict[str, Any] = {key: None for key in RUN_COLUMNS}
    row.update(
        task=names["task"], controller=names["controller"], preset=names["preset"],
        seed=int(names["seed"]) if names["seed"] is not None else None,
        solved=False, seconds=seconds, status="unfinished", updates=updates,
        level=last_int("level"), episodes=last_int("episodes"),
        seconds_per_update=seconds / updates if updates else None,
    )
    task = row["task"]
    if task in TASKS:
        row["training_complexity"] = TASKS[task].training_complexity
    return row


def collect(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One row per run found under ``roots``, with the columns of :data:`RUN_COLUMNS`.

    Arguments:
        roots: folders of run folders (a sweep's roots), or run folders themselves.

    Returns:
        The rows, ordered by task and controller as in the paper, then preset and seed; each also
        has ``"folder"``, the run's folder (not written to the CSV).

    Raises:
        ValueError: a root does not exist, or holds no run.
    """
    rows = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{str(root)!r} is not a folder; give the root a sweep wrote its runs into")
        folders = _run_folders(root)
        if not folders:
            raise ValueError(f"no runs in {str(root)!r}: no folder there holds a summary.json, metrics.csv "
                             "or checkpoint.pt; give the root a sweep wrote its runs into")
        for folder in folders:
            try:
                summary = json.loads((folder / "summary.json").read_text())
            except (OSError, ValueError):  # missing, or being written: read the metrics instead
                summary = None
            row = _row_from_summary(summary) if isinstance(summary, dict) else _row_from_metrics(folder)
            row["folder"] = folder
            rows.append(row)
    return sorted(rows, key=_order)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, controller, preset), with the columns of :data:`SUMMARY_COLUMNS`.

    The success rate leaves out unfinished runs (``None`` when every run is unfinished); the median
    updates to solve is over the solved runs only (``None`` when none was solved).

    >>> rows = [{"task": "copy", "controller": "direct", "preset": "fast", "seed": s, "status": status,
    ...          "solved": status == "solved", "updates_to_solve": u, "greedy_exact_1x": a}
    ...         for s, status, u, a in [(0, "solved", 100, 1.0), (1, "max-updates", None, 0.5),
    ...                                 (2, "solved", 300, 1.0), (3, "unfinished", None, None)]]
    >>> row = summarize(rows)[0]
    >>> row["runs"], row["unfinished"], row["solved"], round(row["success_rate"], 3), row["median_updates_to_solve"]
    (4, 1, 2, 0.667, 200.0)
    >>> row["median_greedy_exact_1x"], row["median_greedy_exact_10x"]
    (1.0, None)
    """
    groups: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=_order):
        groups.setdefault((row["task"], row["controller"], row["preset"]), []).append(row)
    summary = []
    for (task, controller, preset), group in groups.items():
        unfinished = sum(1 for row in group if row.get("status") in _UNFINISHED)
        solved = [row for row in group if row.get("solved")]
        finished = len(group) - unfinished
        entry = {
            "task": task, "controller": controller, "preset": preset, "runs": len(group),
            "unfinished": unfinished, "solved": len(solved),
            "success_rate": len(solved) / finished if finished else None,
            "median_updates_to_solve": _median(row.get("updates_to_solve") for row in solved),
        }
        for multiplier in MULTIPLIERS:
            key = f"greedy_exact_{multiplier}x"
            entry[f"median_{key}"] = _median(row.get(key) for row in group)
        summary.append(entry)
    return summary


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path, columns: Sequence[str] = RUN_COLUMNS) -> Path:
    """Write ``rows`` as CSV with ``columns`` (other keys are left out; ``None`` is an empty cell).

    Returns:
        ``path`` as a :class:`~pathlib.Path`; its folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    return path


_HEADERS = {
    "task": "Task", "controller": "Controller", "preset": "Preset", "runs": "Runs", "solved": "Solved",
    "success_rate": "Success rate", "median_updates_to_solve": "Median updates to solve (solved runs)",
    **{f"median_greedy_exact_{m}x": f"Greedy exact {m}x (median)" for m in MULTIPLIERS},
}


def _cells(row: dict[str, Any], missing: str = "-") -> list[str]:
    """A summary row as text: percentages, whole updates, ``missing`` where there is no value."""
    def percent(value: float | None) -> str:
        return missing if value is None else f"{value:.1%}"

    solved = f"{row['solved']}/{row['runs'] - row['unfinished']}"
    if row["unfinished"]:
        solved += f" (+{row['unfinished']} unfinished)"
    updates = row["median_updates_to_solve"]
    return [str(row["task"]), str(row["controller"]), str(row["preset"]), str(row["runs"]), solved,
            percent(row["success_rate"]), missing if updates is None else f"{updates:.0f}",
            *(percent(row[f"median_greedy_exact_{m}x"]) for m in MULTIPLIERS)]


def _headers() -> list[str]:
    return [_HEADERS[key] for key in ("task", "controller", "preset", "runs", "solved", "success_rate",
                                      "median_updates_to_solve")] + [_HEADERS[f"median_greedy_exact_{m}x"] for m in MULTIPLIERS]


def format_rst(summary: Sequence[dict[str, Any]], *, title: str | None = None) -> str:
    """The summary as an RST ``list-table`` (the "Solved" cell: solved / finished runs).

    >>> print(format_rst([{"task": "copy", "controller": "direct", "preset": "fast", "runs": 2, "unfinished": 0,
    ...     "solved": 2, "success_rate": 1.0, "median_updates_to_solve": 250.0, "median_greedy_exact_1x": 1.0,
    ...     "median_greedy_exact_2x": 1.0, "median_greedy_exact_5x": None, "median_greedy_exact_10x": None}]))
    ... # doctest: +ELLIPSIS
    .. list-table::
       :header-rows: 1
    <BLANKLINE>
       * - Task
         - Controller
    ...
       * - copy
         - direct
         - fast
         - 2
         - 2/2
         - 100.0%
         - 250
         - 100.0%
         - 100.0%
         - \\-
         - \\-
    <BLANKLINE>
    """
    lines = [".. list-table::" + (f" {title}" if title else ""), "   :header-rows: 1", ""]
    # A bare "-" in a cell would start a bullet list: escape it.
    for cells in [_headers(), *(_cells(row, missing="\\-") for row in summary)]:
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return "\n".join(lines) + "\n"


def write_rst(summary: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Write :func:`format_rst`'s table to ``path`` (for ``.. include::``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_rst(summary, title=title))
    return path


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a plain-text table, for a terminal."""
    headers = ["task", "controller", "preset", "runs", "solved", "success", "median updates (solved)",
               *(f"{m}x" for m in MULTIPLIERS)]
    table = [headers, *(_cells(row) for row in summary)]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def plot_curves(rows: Iterable[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Learning curves per (task, preset), one line per controller x seed, as PNGs in ``folder``.

    Arguments:
        rows: :func:`collect`'s rows (their ``"folder"`` locates the metrics); runs without
            metrics are left out.
        folder: where to write ``curves_{task}_{preset}.png`` (created if needed).

    Returns:
        The files written.
    """
    from .plots import plot_learning_curves

    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=_order):
        metrics = Path(row["folder"]) / "metrics.csv" if row.get("folder") is not None else None
        if metrics is None or not metrics.is_file() or metrics.stat().st_size == 0:
            continue
        with metrics.open() as file:  # a header alone: the run had not made an update
            if sum(1 for _ in zip(range(2), file)) < 2:
                continue
        groups.setdefault((row["task"], row["preset"]), []).append(row)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (task, preset), group in groups.items():
        labels = [f"{row['controller']} seed {row['seed']}" for row in group]
        # The same run in several roots: tell them apart by their root's name.
        labels = [f"{label} ({Path(row['folder']).parent.name})" if labels.count(label) > 1 else label
                  for label, row in zip(labels, group)]
        path = folder / f"curves_{task}_{preset}.png"
        written.append(plot_learning_curves([row["folder"] for row in group], path, labels=labels,
                                            title=f"{task}, {preset} preset"))
    return written


def write_results(roots: Iterable[str | Path], out: str | Path) -> dict[str, Any]:
    """Collect the runs under ``roots`` and write every table and figure into ``out``.

    Returns:
        ``{"rows", "summary", "files"}``: the run rows, the summary rows, and the paths written
        (``table4.csv``, ``summary.csv``, ``summary.rst``, then the curves).

    Raises:
        ValueError: a root does not exist or holds no run.
    """
    out = Path(out)
    rows = collect(roots)
    summary = summarize(rows)
    curves = plot_curves(rows, out)
    files = [write_csv(rows, out / "table4.csv"),
             write_csv(summary, out / "summary.csv", SUMMARY_COLUMNS),
             write_rst(summary, out / "summary.rst"),
             write_curves_rst(curves, out / "curves.rst"),
             *curves]
    return {"rows": rows, "summary": summary, "files": files}


def write_curves_rst(images: Iterable[str | Path], path: str | Path) -> Path:
    """An RST fragment showing each curve image, for a page in the folder above ``path``'s.

    reStructuredText resolves an included file's image paths from the page that includes it, so
    each image is named ``{folder}/{file}``: ``docs/results.rst`` includes
    ``docs/results/curves.rst``, which shows ``results/curves_copy_fast.png``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = Path(tmp) / "results"
    ...     out.mkdir()
    ...     print(write_curves_rst([out / "curves_copy_fast.png"], out / "curves.rst").read_text())
    **copy, fast preset**
    <BLANKLINE>
    .. image:: results/curves_copy_fast.png
       :alt: learning curves of copy with the fast preset
    <BLANKLINE>
    <BLANKLINE>
    """
    path = Path(path)
    blocks = []
    for image in images:
        task, _, preset = Path(image).stem.removeprefix("curves_").rpartition("_")
        blocks.append(f"**{task}, {preset} preset**\n\n.. image:: {path.parent.name}/{Path(image).name}\n"
                      f"   :alt: learning curves of {task} with the {preset} preset\n\n")
    path.write_text("".join(blocks))
    return path
