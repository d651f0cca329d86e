"""Training: curriculum -> episodes -> objective -> optimizer -> metrics, and nothing lost.

:class:`Trainer` owns one run's state (model, optimizer, curriculum, random streams, counters) and
makes one parameter update per :meth:`Trainer.step`:

1. the curriculum draws a complexity per input (Table 3), the task draws the instances, and each
   input is repeated ``rollouts_per_input`` times;
2. the model runs the episodes, sampling its actions;
3. :func:`~rlntm_demo.objective.episode_losses` turns them into the loss (reward-to-go, the
   baselines, the leave-one-out baseline with several rollouts), averaged over the episodes;
4. the gradient norms of the controller and of the baseline LSTM are clipped separately, and the
   optimizer steps; the moving-average baseline moves;
5. the sampled policy's zero-one error, normalized by target length, feeds the curriculum.

Once the curriculum is at its top level, a greedy evaluation at the training length runs every
``evaluation.every`` updates; the run is *solved* when it reaches ``evaluation.solved_accuracy``.
With ``evaluation.select_on``, a solved run goes on evaluating at those lengths and keeps the
parameters that did best (:class:`Selection`); the final evaluation uses them.

:func:`train` and :func:`resume` run a whole training in an output folder::

    DIR/metrics.csv       one row per update (see rlntm_demo.metrics.FIELDS)
    DIR/checkpoint.pt     the latest state, a plain dict (torch.load(..., weights_only=True))
    DIR/summary.json      solved, updates_to_solve, top_level_reached, greedy_exact_accuracy, ...

**Reproducible and resumable.** The weights, the instances and the sampled actions come from three
streams seeded by ``config.seed``; the actions' stream is torch's global generator, swapped in
for the update only, so code around a run keeps its own random state. A checkpoint saves all
three, with the optimizer and the curriculum, so a resumed run makes exactly the updates the
uninterrupted run would have made. Ctrl-C finishes the update in progress, saves, and returns
(a second Ctrl-C stops at once). A loss or gradient that is not finite stops the run before the
bad update is applied, keeps the last checkpoint, and says what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .curriculum import Curriculum, curriculum_error
from .evaluation import LengthResult, evaluate, row_errors
from .metrics import MetricsLog
from .model import RLNTM
from .objective import episode_losses
from .config import TrainConfig
from .presets import apply_overrides, config_from_dict

__all__ = ["CHECKPOINT_FORMAT", "RunExistsError", "Selection", "Trainer", "TrainingDiverged", "resume", "source_commit",
           "train"]

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout."""
FINAL_EVALUATION_SEED = 10**9
"""Seeds the instances of the final evaluation, which also confirms a passing periodic check."""
SELECTION_SEED = 10**9 + 1
"""Seeds the instances of model selection (``evaluation.select_on``), apart from the final evaluation's."""
_DATA_SEED_OFFSET = 7919
"""The instances' stream is seeded with ``seed + _DATA_SEED_OFFSET``, apart from the weights'."""


@functools.cache
def source_commit() -> str | None:
    """The git commit of the ``rlntm_demo`` code running, ``+dirty`` where tracked files differ
    from it; ``None`` outside a git checkout (an installed wheel) or without git. Asked once per
    process: the code a process runs is the code it imported, whatever the checkout does later.

    >>> commit = source_commit()
    >>> commit is None or len(commit.removesuffix("+dirty")) == 40
    True
    """
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


class TrainingDiverged(RuntimeError):
    """The loss or a gradient norm stopped being finite."""


class RunExistsError(ValueError):
    """The output folder already holds a run (pass ``--resume`` to continue it)."""


@dataclasses.dataclass
class Selection:
    """The parameters model selection kept (``evaluation.select_on``), and what earned them their place.

    >>> Selection(update=400, score=0.995, model={}).update
    400
    """

    update: int
    """The update after which the model had these parameters."""
    score: float
    """Their mean greedy exact accuracy at the ``select_on`` lengths."""
    model: dict[str, torch.Tensor]
    """The model's state dict, copied."""


class Trainer:
    """One training run's state, and the update that moves it.

    Arguments:
        config: the run's configuration.

    >>> from rlntm_demo.presets import make_config
    >>> trainer = Trainer(make_config("copy", "direct", "fast", overrides=["batch_size=16", "rollouts_per_input=4"]))
    >>> metrics = trainer.step()
    >>> trainer.update, metrics["level"], 0.0 <= metrics["error"] <= 1.0
    (1, 1, True)
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.task = config.task_instance()
        self.model = RLNTM(config.model, generator=torch.Generator().manual_seed(config.seed))
        self.curriculum = Curriculum(config.curriculum)
        self.optimizer = _make_optimizer(self.model, config)
        self.data_generator = torch.Generator().manual_seed(config.seed + _DATA_SEED_OFFSET)
        self.action_rng = torch.Generator().manual_seed(config.seed).get_state()
        self.update = 0
        self.episodes = 0
        self.seconds = 0.0
        self.solved_at: int | None = None
        self.last_greedy_exact: float | None = None
        self.selected: Selection | None = None
        # The commits whose code made this run's updates, in order (several when resumed after a change).
        self.commits: list[str] = []
        self._note_commit()

    def _note_commit(self) -> None:
        commit = source_commit()
        if commit is not None and (not self.commits or self.commits[-1] != commit):
            self.commits.append(commit)

    # --- one update ---------------------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        """Make one parameter update.

        Returns:
            This update's metrics (the columns of :data:`rlntm_demo.metrics.FIELDS`).

        Raises:
            TrainingDiverged: the loss or a gradient norm is not finite; nothing was changed.
        """
        config = self.config
        started = time.perf_counter()
        complexities, exact_branch = self.curriculum.sample_with_branches(config.inputs_per_update, self.data_generator)
        batch = self.task.sample_mixed(complexities, self.data_generator)
        if config.rollouts_per_input > 1:
            batch = batch.repeat(config.rollouts_per_input)
            exact_branch = exact_branch.repeat_interleave(config.rollouts_per_input)
        with _action_stream(self):
            rollout = self.model.run_episode(batch)
        objective = config.objective
        if objective.entropy_bonus_at_top is not None and self.curriculum.at_top:
            objective = dataclasses.replace(objective, entropy_bonus=objective.entropy_bonus_at_top)
        losses = episode_losses(rollout, objective, group_size=config.rollouts_per_input)
        loss = losses.total.mean()  # normalized by the number of episodes, not by their length
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {float(loss.detach())} at update {self.update + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = [
            _clip(list(group.values()), limit)
            for group, limit in ((self.model.policy_parameters(), config.optimizer.clip_controller),
                                 (self.model.baseline_parameters(), config.optimizer.clip_baseline))
        ]
        if not all(math.isfinite(n) for n in norms):
            raise TrainingDiverged(f"a gradient norm became {norms} at update {self.update + 1}")
        self.optimizer.step()
        if self.model.config.online_baseline:
            self.model.update_online_baseline(losses.returns, rollout.mask)

        errors = row_errors(rollout, batch).to(loss.dtype)
        error = float((errors / batch.target_len).clamp(max=1.0).mean())
        increased = self.curriculum.update(curriculum_error(errors, batch.target_len, exact_branch, config.curriculum))
        self.update += 1
        self.episodes += batch.batch_size
        greedy = self._maybe_evaluate(increased)
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        return {
            "update": self.update,
            "episodes": self.episodes,
            "level": self.curriculum.level,
            "error": error,
            "smoothed_error": self.curriculum.smoothed_error,
            "objective": float(losses.objective.detach().mean()),
            "loss": float(loss.detach()),
            "grad_norm_controller": norms[0],
            "grad_norm_baseline": norms[1],
            "mean_steps": float(rollout.lengths.float().mean()),
            "seconds": elapsed,
            "greedy_exact": greedy,
        }

    def _maybe_evaluate(self, just_reached: bool) -> float | None:
        """The greedy check at the training length, when the curriculum is at its top and it is due
        (every ``evaluation.every`` updates, and at the update that reached the top); once solved,
        model selection on the same schedule."""
        evaluation = self.config.evaluation
        if not self.curriculum.at_top:
            return None
        if self.solved_at is not None:
            if (self.update - self.solved_at) % evaluation.every == 0:
                self._select()
            return None
        if self.update % evaluation.every and not just_reached:
            return None
        result = self.evaluate(multipliers=(1,), instances=evaluation.check_instances, seed=self.update)[1]
        self.last_greedy_exact = result.exact
        if result.exact >= evaluation.solved_accuracy:
            # Confirmed on the final evaluation's own instances before the run may stop: a lucky
            # small sample must not end a run that the summary would then call unsolved.
            if self._solves_on_final_instances():
                self.solved_at = self.update
                self._select()
        return result.exact

    def _solves_on_final_instances(self) -> bool:
        """Whether the current parameters reach ``evaluation.solved_accuracy`` at the training
        length on the final evaluation's own instances, the test the summary's ``solved`` applies."""
        confirmed = self.evaluate(multipliers=(1,), seed=FINAL_EVALUATION_SEED)[1]
        return confirmed.exact >= self.config.evaluation.solved_accuracy

    def _select(self) -> None:
        """Model selection: keep the current parameters if they beat the kept ones at the
        ``evaluation.select_on`` lengths and still solve the task (a no-op without ``select_on``).
        The first candidate, at the solving update, has just been confirmed to solve it."""
        evaluation = self.config.evaluation
        if not evaluation.select_on:
            return
        results = self.evaluate(multipliers=evaluation.select_on, instances=evaluation.check_instances, seed=SELECTION_SEED)
        score = sum(result.exact for result in results.values()) / len(results)
        if self.selected is not None and (score <= self.selected.score or not self._solves_on_final_instances()):
            # Parameters that fail at the training length would make the summary call a solved run unsolved.
            return
        self.selected = Selection(self.update, score, _copy_state(self.model.state_dict()))

    @property
    def evaluated_update(self) -> int:
        """The update whose parameters :meth:`selected_parameters` gives: the selected one, else the last."""
        return self.update if self.selected is None else self.selected.update

    @contextlib.contextmanager
    def selected_parameters(self) -> Iterator[None]:
        """Run the block with the model holding the selected parameters (the current ones without
        a selection), and put the current ones back after it."""
        if self.selected is None:
            yield
            return
        current = _copy_state(self.model.state_dict())
        self.model.load_state_dict(self.selected.model)
        try:
            yield
        finally:
            self.model.load_state_dict(current)

    @property
    def finished(self) -> bool:
        """Whether the run is over: its update budget spent, or solved (with ``stop_when_solved``)
        ``updates_after_solved`` updates ago."""
        config = self.config
        if self.update >= config.max_updates:
            return True
        return (config.stop_when_solved and self.solved_at is not None
                and self.update >= self.solved_at + config.updates_after_solved)

    def evaluate(self, *, multipliers: Iterable[int] | None = None, instances: int | None = None, seed: int = 0) -> dict[int, LengthResult]:
        """Greedy accuracy on fresh instances at multiples of the training length.

        Arguments:
            multipliers: default ``config.evaluation.multipliers``.
            instances: default ``config.evaluation.instances``.
            seed: seeds the instances (mixed with the run's seed).
        """
        evaluation = self.config.evaluation
        return evaluate(
            self.model,
            self.task,
            training_complexity=self.config.curriculum.max_level,
            multipliers=tuple(multipliers or evaluation.multipliers),
            instances=instances or evaluation.instances,
            seed=self.config.seed * 100_003 + seed,
        )

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on exactly from here, as plain values and tensors."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "update": self.update,
            "episodes": self.episodes,
            "seconds": self.seconds,
            "solved_at": self.solved_at,
            "last_greedy_exact": self.last_greedy_exact,
            "selected": None if self.selected is None else dataclasses.asdict(self.selected),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "action_rng": self.action_rng.clone(),
            "data_rng": self.data_generator.get_state(),
            "commits": list(self.commits),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the config is not changed)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}; it was written by another version")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.action_rng = state["action_rng"].clone()
        self.data_generator.set_state(state["data_rng"])
        self.update = int(state["update"])
        self.episodes = int(state["episodes"])
        self.seconds = float(state["seconds"])
        self.solved_at = None if state["solved_at"] is None else int(state["solved_at"])
        self.last_greedy_exact = state["last_greedy_exact"]
        selected = state.get("selected")  # checkpoints from before model selection have none
        self.selected = None if selected is None else Selection(int(selected["update"]), float(selected["score"]),
                                                                _copy_state(selected["model"]))
        self.commits = list(state.get("commits", []))  # checkpoints from before commits were kept have none
        self._note_commit()

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], *, overrides: Iterable[str] = (), max_updates: int | None = None) -> Trainer:
        """A trainer restored from a checkpoint, its config optionally changed.

        Arguments:
            state: a checkpoint (:func:`~rlntm_demo.checkpoints.load_checkpoint`).
            overrides: ``section.field=value`` changes to the stored config (the run is then no
                longer the one the config describes; the summary records the new config).
            max_updates: a new update budget.
        """
        settings = apply_overrides(state["config"], overrides)
        if max_updates is not None:
            settings = {**settings, "max_updates": max_updates}
        trainer = cls(config_from_dict(settings))
        trainer.load_state_dict(state)
        return trainer


def _copy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def _make_optimizer(model: RLNTM, config: TrainConfig) -> torch.optim.Optimizer:
    settings = config.optimizer
    params = list(model.parameters())
    if settings.name == "adam":
        return torch.optim.Adam(params, lr=settings.learning_rate)
    return torch.optim.SGD(params, lr=settings.learning_rate, momentum=settings.momentum)


def _clip(params: list[torch.Tensor], limit: float | None) -> float:
    """Clip the gradient norm of ``params`` to ``limit`` (if any); returns the norm before."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(grads, limit if limit is not None else float("inf"))
    return float(norm)


@contextlib.contextmanager
def _action_stream(trainer: Trainer) -> Iterator[None]:
    """Run the block on the trainer's action stream, leaving torch's global state as it was.

    The stream advances only if the block completes: an interrupted rollout is replayed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(trainer.action_rng)
        yield
        trainer.action_rng = torch.get_rng_state()  # not reached when the block raised


# --- whole runs ---------------------------------------------------------------------------------


class _StopRequest:
    """Ctrl-C sets a flag the loop checks between updates; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(config: TrainConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train a new run in the folder ``out`` (created if needed) and return its summary.

    Raises:
        RunExistsError: ``out`` already holds a checkpoint; resume it with :func:`resume` or
            choose another folder.
    """
    out = Path(out)
    if (out / CHECKPOINT_NAME).exists():
        raise RunExistsError(
            f"{str(out)!r} already holds a run; continue it with --resume, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return _run(Trainer(config), out, resume_after=None, progress=progress)


def resume(out: str | Path, *, overrides: Iterable[str] = (), max_updates: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Continue the run saved in ``out`` exactly where its checkpoint left it.

    Arguments:
        out: the run's folder.
        overrides: changes to its config (``section.field=value``).
        max_updates: a new update budget (to train further than the first run asked).

    Raises:
        CheckpointError: no readable checkpoint in ``out``.
    """
    out = Path(out)
    trainer = Trainer.from_checkpoint(load_checkpoint(out), overrides=overrides, max_updates=max_updates)
    return _run(trainer, out, resume_after=trainer.update, progress=progress)


def _run(trainer: Trainer, out: Path, *, resume_after: int | None, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    config = trainer.config
    checkpoint = out / CHECKPOINT_NAME
    status = "max-updates"
    message = None
    tensorboard = out / "tensorboard" if config.tensorboard else None
    with MetricsLog(out / "metrics.csv", resume_after=resume_after, tensorboard_dir=tensorboard) as log, \
            _StopRequest() as stop, \
            tqdm(total=config.max_updates, initial=trainer.update, disable=not progress, unit="update",
                 desc=f"{config.task}/{config.controller}", dynamic_ncols=True) as bar:
        while not trainer.finished:
            if stop.requested:
                status = "interrupted"
                break
            try:
                row = trainer.step()
            except TrainingDiverged as error:
                status, message = "diverged", (
                    f"{error} (level {trainer.curriculum.level}); stopped before applying it. The last good "
                    f"checkpoint is kept in {str(out)!r}. Lower optimizer.learning_rate or tighten the clipping, "
                    f"then continue: rlntm-demo train --resume --out {out} --set optimizer.learning_rate=..."
                )
                break
            log.write(row)
            bar.update(1)
            bar.set_postfix(level=f"{row['level']}/{config.curriculum.max_level}", err=f"{row['error']:.3f}",
                            greedy="-" if trainer.last_greedy_exact is None else f"{trainer.last_greedy_exact:.3f}")
            if trainer.update % config.checkpoint_every == 0:
                save_checkpoint(trainer.state_dict(), checkpoint)
        if stop.requested and status != "diverged":
            status = "interrupted"
        if trainer.solved_at is not None and status == "max-updates":
            status = "solved"
    if status != "diverged":
        save_checkpoint(trainer.state_dict(), checkpoint)
    summary = _summary(trainer, status, message, final_evaluation=status in ("solved", "max-updates"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(trainer: Trainer, status: str, message: str | None, *, final_evaluation: bool) -> dict[str, Any]:
    """The run's summary; greedy accuracies at every multiplier when ``final_evaluation``."""
    config = trainer.config
    exact: dict[str, float] = {}
    per_symbol: dict[str, float] = {}
    if final_evaluation:
        with trainer.selected_parameters():
            results = trainer.evaluate(seed=FINAL_EVALUATION_SEED)
        for multiplier, result in results.items():
            exact[str(multiplier)] = result.exact
            per_symbol[str(multiplier)] = result.per_symbol
    top = trainer.curriculum.at_top
    solved = bool(top and exact.get("1", 0.0) >= config.evaluation.solved_accuracy)
    return {
        "task": config.task,
        "controller": config.controller,
        "preset": config.preset,
        "seed": config.seed,
        "status": status,
        "message": message,
        "solved": solved,
        # A run can pass the final evaluation without a periodic one having passed first.
        "updates_to_solve": (trainer.update if trainer.solved_at is None else trainer.solved_at) if solved else None,
        "top_level_reached": top,
        "greedy_exact_accuracy": exact,
        "evaluated_update": trainer.evaluated_update,
        "greedy_per_symbol_accuracy": per_symbol,
        "training_complexity": config.curriculum.max_level,
        "level": trainer.curriculum.level,
        "updates": trainer.update,
        "episodes": trainer.episodes,
        "seconds": trainer.seconds,
        "seconds_per_update": trainer.seconds / max(trainer.update, 1),
        "torch_version": torch.__version__,
        "commits": list(trainer.commits),
        "config": config.to_dict(),
    }
