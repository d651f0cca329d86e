"""rlntm_demo: the Reinforcement Learning Neural Turing Machine in PyTorch, checked exactly.

A readable reimplementation of Zaremba & Sutskever, "Reinforcement Learning Neural Turing
Machines": a controller (LSTM, direct access or feed-forward) moves heads over an input tape and a
memory tape and decides when to write to the output tape, with REINFORCE for the discrete moves
and backpropagation for the predictions and memory writes. Its gradient is verified exactly by
``reinforce_check`` (``python -m rlntm_demo check --task reverse --controller direct``).

Modules, in the order data flows through them:

* :mod:`~rlntm_demo.config`: the alphabet and the configuration dataclasses;
* :mod:`~rlntm_demo.tasks`: the tasks and their batches, apart from the engine;
* :mod:`~rlntm_demo.interfaces`: the input, memory and output tapes;
* :mod:`~rlntm_demo.controllers`: the controller networks and the baseline LSTM;
* :mod:`~rlntm_demo.model`: :class:`~rlntm_demo.model.RLNTM` and its batched rollout;
* :mod:`~rlntm_demo.reference`: the step as the paper describes it, which defines the model;
* :mod:`~rlntm_demo.fast`: the same step in few operations (one graph node per step, in Python
  and, compiled on first use, in C++), held equal to the reference by the tests;
* :mod:`~rlntm_demo.objective`: rewards-to-go, baselines and the surrogate loss;
* :mod:`~rlntm_demo.check`: the exact gradient check of the whole model, and
  :mod:`~rlntm_demo.bugs`, the deliberate bugs it catches;
* :mod:`~rlntm_demo.curriculum`: the curriculum of Section 7;
* :mod:`~rlntm_demo.presets`: the training configuration and the ``paper``, ``authors`` and ``fast`` presets;
* :mod:`~rlntm_demo.training`: the trainer, with checkpoints (:mod:`~rlntm_demo.checkpoints`)
  and metrics (:mod:`~rlntm_demo.metrics`);
* :mod:`~rlntm_demo.evaluation`: greedy evaluation at longer lengths;
* :mod:`~rlntm_demo.plots`, :mod:`~rlntm_demo.traces`: learning curves and Figure 7-style traces;
* :mod:`~rlntm_demo.sweep`, :mod:`~rlntm_demo.results`: many runs on Ray, and their tables;
* :mod:`~rlntm_demo.bench`: the speed benchmark;
* :mod:`~rlntm_demo.cli`: the command line.

Importing the package imports nothing but this docstring's names on demand, and has no side
effects (no seeding, no argument parsing).

>>> from rlntm_demo import RLNTM, ModelConfig, make_task
>>> task = make_task("copy", num_symbols=3)
>>> model = RLNTM(ModelConfig(controller="lstm", interfaces=task.interfaces))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Batch": "tasks",
    "CheckReport": "check",
    "InterfaceSpec": "config",
    "ModelConfig": "config",
    "ObjectiveConfig": "config",
    "TrainConfig": "config",
    "Trainer": "training",
    "make_config": "presets",
    "train": "training",
    "RLNTM": "model",
    "Rollout": "model",
    "TASKS": "tasks",
    "Task": "tasks",
    "check_model": "check",
    "episode_losses": "objective",
    "make_task": "tasks",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .check import CheckReport, check_model
    from .config import InterfaceSpec, ModelConfig, ObjectiveConfig, TrainConfig
    from .model import RLNTM, Rollout
    from .objective import episode_losses
    from .presets import make_config
    from .training import Trainer, train
    from .tasks import TASKS, Batch, Task, make_task


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlntm_demo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
