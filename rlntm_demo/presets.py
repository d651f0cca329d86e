"""The training configuration and its three presets: ``paper``, ``authors`` and ``fast``.

A run is fully described by a :class:`TrainConfig` and nothing else: the task, the controller,
the seed, the model, the objective, the optimizer, the curriculum and the evaluation. A preset is a
function of the task and the controller that fills one in; a file (JSON or TOML, the same nesting
as :meth:`TrainConfig.to_dict`) and ``section.field=value`` overrides then change any field.

=====================  =============================  ==============================  ===============================
                       ``paper``                      ``authors``                     ``fast``
=====================  =============================  ==============================  ===============================
optimizer              SGD 0.05, momentum 0.9         SGD 0.05, momentum 0.9          Adam 0.005
episodes per update    200                            300                             200 = 25 inputs x 8 rollouts
gradient clipping      5 controller, 2 baseline       2 controller, 5 baseline        5 controller, 2 baseline
baseline               moving average + LSTM          LSTM                            leave-one-out over the rollouts
inverse temperature    0.01                           0.01 (0.03 RepeatCopy)          1
initial state          0                              0.1                             0
read window            current cell                   2 cells each side               current cell
input tape             ends are walls                 circular                        ends are walls
entropy bonus          none                           none                            0.3 (``-0.3 log p(a_t)`` per step),
                                                                                      0 at the top level
curriculum             10/25/65%, threshold 0.2,      10/22.5/67.5%, EMA 0.8 of the   10/25/65%, threshold 0.2,
                       100 updates between levels     error, threshold 0.2 (0.25      10 updates between levels
                                                      ForwardReverse), 100 updates
=====================  =============================  ==============================  ===============================

All three draw every weight from N(0, 0.1^2), use memory cells of 35 reals, reward-to-go, and
normalize the gradient by the number of episodes (not by sequence length). Every option of the
``fast`` preset is checked exactly like the paper's: ``rlntm-demo check --rollouts 2``.

>>> config = make_config("copy", "direct", "fast", seed=3, overrides=["optimizer.learning_rate=0.01"])
>>> config.optimizer.name, config.optimizer.learning_rate, config.rollouts_per_input, config.curriculum.max_level
('adam', 0.01, 8, 20)
>>> make_config("copy", "direct", "fast", overrides=["optimizer.rate=1"])
Traceback (most recent call last):
...
ValueError: unknown setting 'optimizer.rate'; optimizer has: name, learning_rate, momentum, clip_controller, clip_baseline
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CONTROLLERS, ModelConfig, ObjectiveConfig
from .curriculum import CurriculumConfig
from .tasks import TASKS

__all__ = [
    "EvaluationConfig",
    "OPTIMIZERS",
    "OptimizerConfig",
    "PRESETS",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config_file",
    "make_config",
]

OPTIMIZERS = ("sgd", "adam")
"""Optimizer names."""


@dataclass
class OptimizerConfig:
    """How gradients become parameter updates.

    >>> OptimizerConfig(name="rmsprop")
    Traceback (most recent call last):
    ...
    ValueError: unknown optimizer 'rmsprop'; choose one of: sgd, adam
    """

    name: str = "sgd"
    """``"sgd"`` (with momentum, as in the paper) or ``"adam"``."""
    learning_rate: float = 0.05
    """Step size (the paper: 0.05)."""
    momentum: float = 0.9
    """SGD momentum (the paper: 0.9); unused by Adam."""
    clip_controller: float | None = 5.0
    """The gradient norm of the controller's parameters is clipped to this (the paper: 5; the
    authors' scripts: 2). ``None``: no clipping."""
    clip_baseline: float | None = 2.0
    """The same for the baseline LSTM's parameters (the paper: 2; the authors' scripts: 5)."""

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, not {self.learning_rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), not {self.momentum}")
        for name in ("clip_controller", "clip_baseline"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value}")


@dataclass
class EvaluationConfig:
    """Greedy evaluation on fresh instances, and what "solved" means.

    >>> EvaluationConfig(multipliers=(2, 5))
    Traceback (most recent call last):
    ...
    ValueError: multipliers must start with 1 (the training length), not (2, 5)
    """

    multipliers: tuple[int, ...] = (1, 2, 5, 10)
    """Test lengths, as multiples of the training length (the top curriculum complexity)."""
    instances: int = 1000
    """Fresh instances per test length in the final evaluation."""
    every: int = 50
    """Once the curriculum is at its top level, evaluate greedily at the training length every
    this many updates, to find out when the task is solved."""
    check_instances: int = 200
    """Instances of those periodic evaluations (the final one uses ``instances``)."""
    solved_accuracy: float = 0.99
    """"Solved": the curriculum is at its top level and the greedy exact-sequence accuracy at the
    training length is at least this."""

    def __post_init__(self) -> None:
        self.multipliers = tuple(int(m) for m in self.multipliers)
        if not self.multipliers or self.multipliers[0] != 1 or any(m < 1 for m in self.multipliers):
            raise ValueError(f"multipliers must start with 1 (the training length), not {self.multipliers}")
        for name in ("instances", "every", "check_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 < self.solved_accuracy <= 1.0:
            raise ValueError(f"solved_accuracy must be in (0, 1], not {self.solved_accuracy}")


@dataclass
class TrainConfig:
    """Everything a training run depends on: equal configs and seeds give equal runs.

    >>> TrainConfig(task="copy", batch_size=10, rollouts_per_input=4)
    Traceback (most recent call last):
    ...
    ValueError: batch_size (10) must be a multiple of rollouts_per_input (4)
    """

    task: str = "copy"
    """The task (a name of :data:`~rlntm_demo.tasks.TASKS`)."""
    controller: str = "direct"
    """``"lstm"``, ``"direct"`` or ``"feedforward"``; overrides ``model.controller``."""
    preset: str = "custom"
    """The preset this config started from (recorded, not used)."""
    seed: int = 0
    """Seeds the weights, the instances and the sampled actions."""
    max_updates: int = 20_000
    """Stop after this many parameter updates (the paper: tasks are solved within 20,000 or never)."""
    batch_size: int = 200
    """Episodes per update (the paper: 200; the authors' scripts: 300)."""
    rollouts_per_input: int = 1
    """Rollouts of each input in a batch; with 2 or more, each rollout's advantage is reduced by
    the leave-one-out mean of the others' (:func:`~rlntm_demo.objective.leave_one_out`)."""
    num_symbols: int | None = None
    """Data symbols the inputs are drawn from; ``None``: the task's default (30, or base 3 for
    addition)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model; ``controller`` and ``interfaces`` are taken from this config and the task."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Returns (reward-to-go by default)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and gradient clipping."""
    curriculum: CurriculumConfig = field(default_factory=lambda: CurriculumConfig(max_level=20))
    """The curriculum; ``max_level`` is the training length (presets take it from the task)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Greedy evaluation and the "solved" criterion."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many updates (and always at the end, on Ctrl-C, on solving)."""
    stop_when_solved: bool = True
    """End the run as soon as the task is solved."""
    tensorboard: bool = False
    """Also log the metrics to TensorBoard (needs the ``tensorboard`` package)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {self.controller!r}; choose one of: {', '.join(CONTROLLERS)}")
        for name in ("max_updates", "batch_size", "rollouts_per_input", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.batch_size % self.rollouts_per_input:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of rollouts_per_input ({self.rollouts_per_input})"
            )
        if self.num_symbols is not None:
            self.task_instance()  # the task validates it
        if self.model.controller != self.controller or self.model.interfaces != TASKS[self.task].interfaces:
            self.model = dataclasses.replace(self.model, controller=self.controller, interfaces=TASKS[self.task].interfaces)

    @property
    def inputs_per_update(self) -> int:
        """Distinct inputs per update: ``batch_size // rollouts_per_input``."""
        return self.batch_size // self.rollouts_per_input

    def task_instance(self) -> Any:
        """The :class:`~rlntm_demo.tasks.Task` this config trains on."""
        options = {} if self.num_symbols is None else {"num_symbols": self.num_symbols}
        return TASKS[self.task](**options)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values (JSON-ready; also what checkpoints store)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    """A ``cls`` dataclass from nested plain values, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'the config'} must be a table of settings, not {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown setting {path + key!r}; {path.rstrip('.') or 'the config'} has: {', '.join(fields)}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{path}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from :meth:`TrainConfig.to_dict`'s output (missing keys: defaults).

    Raises:
        ValueError: an unknown key (the message lists the valid ones) or an invalid value.
    """
    return _build(TrainConfig, data, "")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON (``.json``) or TOML (``.toml``) file, nested like :meth:`TrainConfig.to_dict`.

    Raises:
        ValueError: the file is missing, of another kind, or does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        elif path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            raise ValueError(f"config file {str(path)!r} must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"config file {str(path)!r} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of settings")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(text: str) -> dict[str, Any]:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}``; the value is read as JSON, else taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"an override must look like section.field=value, not {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if raw in ("None", "null"):
        value = None
    nested: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def apply_overrides(settings: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``settings`` (nested like :meth:`TrainConfig.to_dict`) with each ``section.field=value`` applied.

    >>> apply_overrides({"optimizer": {"name": "sgd"}}, ["optimizer.learning_rate=0.1", "seed=2"])
    {'optimizer': {'name': 'sgd', 'learning_rate': 0.1}, 'seed': 2}
    """
    for text in overrides:
        settings = _merge(settings, _parse_override(text))
    return settings


# --- presets ---------------------------------------------------------------------------------


def _paper(task: str, controller: str) -> dict[str, Any]:
    return {
        "batch_size": 200,
        "model": {"init_std": 0.1, "inverse_temperature": 0.01, "memory_width": 35, "initial_state": 0.0,
                  "baseline": "both", "read_window": 0},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "clip_controller": 5.0, "clip_baseline": 2.0},
        "curriculum": {"threshold": 0.2, "min_updates_between": 100, "probabilities": [0.10, 0.25, 0.65]},
    }


def _authors(task: str, controller: str) -> dict[str, Any]:
    return {
        "batch_size": 300,
        "model": {"init_std": 0.1, "inverse_temperature": 0.03 if task.startswith("repeat-copy") else 0.01,
                  "initial_state": 0.1, "baseline": "offline", "read_window": 2, "circular_input": True},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "clip_controller": 2.0, "clip_baseline": 5.0},
        "curriculum": {"threshold": 0.25 if task == "forward-reverse" else 0.2, "min_updates_between": 100,
                       "probabilities": [0.10, 0.225, 0.675], "smoothing": 0.8},
    }


def _fast(task: str, controller: str) -> dict[str, Any]:
    return {
        "batch_size": 200,
        "rollouts_per_input": 8,
        "model": {"init_std": 0.1, "inverse_temperature": 1.0, "initial_state": 0.0, "baseline": "none", "read_window": 0},
        "objective": {"entropy_bonus": 0.3, "entropy_bonus_at_top": 0.0},
        "optimizer": {"name": "adam", "learning_rate": 0.005, "clip_controller": 5.0, "clip_baseline": 2.0},
        "curriculum": {"threshold": 0.2, "min_updates_between": 10, "probabilities": [0.10, 0.25, 0.65]},
    }


PRESETS: dict[str, Callable[[str, str], dict[str, Any]]] = {"paper": _paper, "authors": _authors, "fast": _fast}
"""Each preset, as a function of the task and the controller returning the settings it changes."""


def make_config(
    task: str,
    controller: str,
    preset: str = "paper",
    *,
    seed: int = 0,
    max_updates: int | None = None,
    file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> TrainConfig:
    """The config of a run: the preset, then the file, then the overrides, each over the last.

    Arguments:
        task: a name of :data:`~rlntm_demo.tasks.TASKS`.
        controller: ``"lstm"``, ``"direct"`` or ``"feedforward"``.
        preset: ``"paper"``, ``"authors"`` or ``"fast"``.
        seed: the run's seed.
        max_updates: the update budget (default: the config's, 20,000).
        file: a JSON or TOML file of settings.
        overrides: ``"section.field=value"`` strings, values in JSON (``"model.baseline=\\"none\\""``
            or simply ``model.baseline=none``).

    Raises:
        ValueError: an unknown task, controller, preset or setting, or an invalid value; the
            message names it and the valid choices.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if controller not in CONTROLLERS:
        raise ValueError(f"unknown controller {controller!r}; choose one of: {', '.join(CONTROLLERS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    settings = _merge(
        {"task": task, "controller": controller, "preset": preset, "seed": seed,
         "curriculum": {"max_level": TASKS[task].training_complexity}},
        PRESETS[preset](task, controller),
    )
    if max_updates is not None:
        settings["max_updates"] = max_updates
    if file is not None:
        settings = _merge(settings, load_config_file(file))
    return config_from_dict(apply_overrides(settings, overrides))

