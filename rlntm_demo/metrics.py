"""Training metrics: one CSV row per update, and TensorBoard when asked.

The CSV file is the record of a run; :mod:`rlntm_demo.plots` draws it. When a run resumes from a
checkpoint, rows written after that checkpoint (by the part of the run that was lost) are dropped
first, so the file holds each update exactly once.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     with MetricsLog(Path(tmp) / "metrics.csv") as log:
...         log.write({"update": 1, "level": 1, "error": 0.5})
...     read_metrics(Path(tmp) / "metrics.csv")[0]["error"]
0.5
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["FIELDS", "MetricsLog", "read_metrics"]

FIELDS = (
    "update", "episodes", "level", "error", "smoothed_error", "objective", "loss",
    "grad_norm_controller", "grad_norm_baseline", "mean_steps", "seconds", "greedy_exact",
)
"""The columns of ``metrics.csv``: the update count, episodes so far, the curriculum level C, the
sampled policy's zero-one error normalized by target length, the error the curriculum compared
with its threshold, the mean of sum_t r_t, the loss, the gradient norms before clipping, the mean
episode length, the wall-clock seconds of the update, and the greedy exact accuracy at the
training length when it was measured (empty otherwise)."""


class MetricsLog:
    """Appends rows to a CSV file (and TensorBoard, with ``tensorboard_dir``).

    Arguments:
        path: the CSV file.
        resume_after: keep only the existing rows with ``update <= resume_after`` (a resumed
            run); ``None`` starts a new file.
        tensorboard_dir: also write scalars there with ``torch.utils.tensorboard``.

    Raises:
        ImportError: ``tensorboard_dir`` is given but the ``tensorboard`` package is missing
            (the message says how to install it).
    """

    def __init__(self, path: str | Path, *, resume_after: int | None = None, tensorboard_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        kept: list[dict[str, Any]] = []
        if resume_after is not None and self.path.exists():
            kept = [row for row in _read_rows(self.path) if int(row["update"]) <= resume_after]
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()
        self._tensorboard = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._file.close()
                raise ImportError(
                    "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                    "(or leave out --tensorboard)"
                ) from None
            self._tensorboard = SummaryWriter(str(tensorboard_dir))

    def write(self, row: dict[str, Any]) -> None:
        """Append one update's metrics (missing columns stay empty) and flush."""
        self._writer.writerow(row)
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "update" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, int(row["update"]))

    def close(self) -> None:
        """Close the files."""
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def read_metrics(path: str | Path) -> list[dict[str, float | None]]:
    """The rows of a ``metrics.csv``, numbers as floats and empty cells as ``None``.

    Raises:
        ValueError: the file does not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"no metrics at {str(path)!r}; give a run's folder or its metrics.csv")
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in _read_rows(path)]
