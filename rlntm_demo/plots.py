"""Learning curves: the curriculum level and the sampled error against updates, from ``metrics.csv``.

One figure, two panels sharing the update axis: the curriculum level C (top) and the sampled
policy's zero-one error normalized by target length (bottom, log scale), one line per run; the
updates at which greedy evaluation ran are marked on the level panel, with their exact accuracy
in the legend of the last one. matplotlib is imported inside :func:`plot_learning_curves` only,
through its Agg backend, without touching pyplot's global state.

>>> import tempfile
>>> from rlntm_demo.metrics import MetricsLog
>>> with tempfile.TemporaryDirectory() as tmp:
...     with MetricsLog(Path(tmp) / "metrics.csv") as log:
...         for update in range(1, 4):
...             log.write({"update": update, "level": update, "error": 0.5 / update})
...     plot_learning_curves([tmp], Path(tmp) / "curves.png").read_bytes()[:4]
b'\\x89PNG'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .metrics import read_metrics

__all__ = ["plot_learning_curves"]


def plot_learning_curves(runs: Sequence[str | Path], path: str | Path, *, labels: Sequence[str] | None = None,
                         title: str | None = None) -> Path:
    """Draw the learning curves of one or more runs and save them as a PNG.

    Arguments:
        runs: run folders (or their ``metrics.csv`` files).
        path: where to write the PNG; its folder must exist.
        labels: one legend label per run (default: the folder names).
        title: a title over the figure.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a run has no metrics, or the labels do not match the runs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("give at least one run folder")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    figure = Figure(figsize=(8, 5.5), constrained_layout=True)
    canvas = FigureCanvasAgg(figure)
    level_axes, error_axes = figure.subplots(2, 1, sharex=True)
    for index, run in enumerate(runs):
        rows = read_metrics(run)
        if not rows:
            raise ValueError(f"{str(run)!r} has an empty metrics.csv")
        label = labels[index] if labels is not None else Path(run).resolve().name
        updates = [row["update"] for row in rows]
        lines = level_axes.plot(updates, [row["level"] for row in rows], label=label, linewidth=1.2)
        evaluated = [(row["update"], row["level"]) for row in rows if row.get("greedy_exact") is not None]
        if evaluated:
            last = [row["greedy_exact"] for row in rows if row.get("greedy_exact") is not None][-1]
            level_axes.plot(*zip(*evaluated), "o", color=lines[0].get_color(), markersize=3,
                            label=f"{label}: greedy check (last {last:.1%})")
        errors = [max(row["error"] or 0.0, 1e-4) for row in rows]
        error_axes.plot(updates, errors, color=lines[0].get_color(), linewidth=0.8, alpha=0.8)
    level_axes.set_ylabel("curriculum level C")
    level_axes.legend(loc="lower right", fontsize="small")
    level_axes.grid(alpha=0.3)
    error_axes.set_yscale("log")
    error_axes.set_ylabel("sampled error per symbol")
    error_axes.set_xlabel("parameter updates")
    error_axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    path = Path(path)
    canvas.print_png(str(path))
    return path
