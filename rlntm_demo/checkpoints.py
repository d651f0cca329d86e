"""Checkpoints: plain dicts of tensors and numbers, written atomically, read with ``weights_only``.

A checkpoint holds everything a run needs to go on exactly where it stopped: the config, the
update count, the model's and the optimizer's state, the curriculum's state, the random streams
(torch's global generator, which samples the actions, and the generator of the instances), and
the solved status. Nothing in it needs pickled classes, so ``torch.load(path, weights_only=True)``
reads it, and a checkpoint from an untrusted source cannot run code.

Writing goes to a temporary file in the same folder, then :func:`os.replace` renames it over the
old checkpoint: an interrupted write leaves the previous checkpoint intact.

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = save_checkpoint({"config": {}, "update": 3, "weights": torch.ones(2)}, Path(tmp) / "checkpoint.pt")
...     load_checkpoint(path)["update"]
3
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
"""The checkpoint's file name in a run's output folder."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not one of this package's."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Arguments:
        path: the checkpoint file, or the run folder that holds ``checkpoint.pt``.

    Raises:
        CheckpointError: it does not exist or cannot be read as a plain checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; train first, or give the run's folder or checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a corrupt or foreign file
        raise CheckpointError(f"cannot read the checkpoint {str(path)!r}: {error}") from None
    if not isinstance(state, dict) or "config" not in state or "update" not in state:
        raise CheckpointError(f"{str(path)!r} is not an rlntm-demo checkpoint (no config or update in it)")
    return state
