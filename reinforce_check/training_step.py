"""Take the loss a library's own training step differentiates, without taking the step.

Most RL libraries build their loss inside their own ``train()`` or ``compute_loss()`` and then
call ``loss.backward()`` and ``optimizer.step()`` themselves (Stable-Baselines3's ``A2C.train()``
and ``PPO.train()``, a CleanRL script's update loop). :func:`capture_loss` runs such a step and
hands back the tensor it would have differentiated, so that an episode can return it to
:func:`~reinforce_check.check_reinforce` as its loss. For the duration of the block:

* ``Tensor.backward`` and ``torch.autograd.backward`` record what they are called on and compute
  nothing; after the ``stop_after``-th call the step is stopped (a private ``BaseException``
  unwinds it and the block swallows it), so nothing after that backward runs: no optimizer step,
  no scheduler step, no counter increment, no logging;
* optimizers' ``step`` and ``zero_grad``, ``Module.zero_grad``, learning-rate schedulers'
  ``step``, ``torch.nn.utils.clip_grad_norm_``, ``clip_grad_value_`` and
  ``clip_grads_with_norm_``, and a ``GradScaler``'s ``scale``, ``unscale_``, ``step`` and
  ``update`` change nothing (``scale`` returns the loss unscaled; an optimizer step a scheduler
  wrapped runs with its parameters' gradients set aside, so finds nothing to do), for steps that
  go on past a recorded backward (``stop_after=None``) or touch them before it;
* objects passed as ``restore`` (an optimizer, a scheduler, a scaler: anything with
  ``state_dict()``/``load_state_dict()``) get their state back on exit, for what a step changes
  before its first backward (SB3's ``train()`` writes the learning rate first).

Everything is put back when the block ends, exceptions included.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .errors import CheckUsageError
from .patching import restore_attributes, save_attributes

__all__ = ["BackwardCall", "TrainingStep", "TrainingStepError", "capture_loss", "step_loss"]


class TrainingStepError(CheckUsageError):
    """A training step could not be captured as asked (no backward call, a capture inside a capture).

    >>> issubclass(TrainingStepError, CheckUsageError)
    True
    """


class _StepStopped(BaseException):
    """Unwinds a training step after its last recorded backward call.

    A BaseException, so that the step's own ``except Exception`` cannot swallow it.
    """


@dataclass(frozen=True)
class BackwardCall:
    """One intercepted ``backward``: what it was called on, and with what.

    >>> x = torch.ones(2, requires_grad=True)
    >>> call = BackwardCall(tensors=(x * 3,), grad_tensors=(torch.tensor([1.0, 2.0]),))
    >>> call.loss.item()
    9.0
    """

    tensors: tuple[torch.Tensor, ...]
    """The tensors backward was called on (one for ``loss.backward()``)."""
    grad_tensors: tuple[torch.Tensor | None, ...] | None = None
    """The ``gradient`` / ``grad_tensors`` argument, if given."""
    inputs: Any = None
    """The ``inputs`` argument, if given (the leaves whose ``.grad`` it would have filled)."""
    retain_graph: bool | None = None
    create_graph: bool = False

    @property
    def loss(self) -> torch.Tensor:
        """The scalar whose gradient this call would have accumulated.

        ``loss.backward()`` on a scalar: the loss itself. With ``gradient=g`` (or several tensors):
        ``sum((t * g).sum())``, which has the same gradient.
        """
        grads = self.grad_tensors if self.grad_tensors is not None else (None,) * len(self.tensors)
        if len(self.tensors) == 1 and grads[0] is None and self.tensors[0].dim() == 0:
            return self.tensors[0]
        total: torch.Tensor | None = None
        for tensor, grad in zip(self.tensors, grads):
            if grad is None:
                if tensor.numel() != 1:
                    raise TrainingStepError(
                        f"backward was called on a tensor of shape {tuple(tensor.shape)} without a gradient "
                        "argument; torch itself refuses that for a non-scalar."
                    )
                term = tensor.reshape(())
            else:
                term = (tensor * grad).sum()
            total = term if total is None else total + term
        if total is None:
            raise TrainingStepError("backward was called on no tensor.")
        return total


class _Capture(threading.local):
    def __init__(self) -> None:
        self.active: TrainingStep | None = None


_ACTIVE = _Capture()


def _subclasses(root: type) -> list[type]:
    found, stack = [], [root]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def _own(classes: Iterable[type], name: str) -> list[tuple[type, str]]:
    return [(cls, name) for cls in classes if name in vars(cls)]


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _zero_norm(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.zeros(())


def _unscaled(self: Any, outputs: Any) -> Any:
    return outputs


class TrainingStep:
    """What :func:`capture_loss` returns: a context manager that records the step's backward calls.

    Attributes:
        calls: the intercepted backward calls, in order (:class:`BackwardCall`).
        stopped: whether the step was stopped after its ``stop_after``-th backward call (``False``
            if it ended by itself, having made fewer).

    >>> w = torch.ones(2, requires_grad=True)
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> with capture_loss() as step:
    ...     opt.zero_grad()
    ...     (w ** 2).sum().backward()
    ...     opt.step()                  # never reached: the step stops after the backward
    >>> step.loss.item(), step.stopped, w.grad is None, w.tolist()
    (2.0, True, True, [1.0, 1.0])
    """

    def __init__(self, *, stop_after: int | None, restore: Sequence[Any]) -> None:
        self.stop_after = stop_after
        self.calls: list[BackwardCall] = []
        self.stopped = False
        self._restore = list(restore)
        self._saved_attributes: list[tuple[Any, str, Any]] = []
        self._saved_states: list[tuple[Any, Any]] = []
        self._hooks: list[Any] = []
        # Gradients set aside while an optimizer's step runs, put back after it (or on exit).
        self._hidden: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    @property
    def losses(self) -> list[torch.Tensor]:
        """The scalar loss of every recorded call (:attr:`BackwardCall.loss`)."""
        return [call.loss for call in self.calls]

    @property
    def loss(self) -> torch.Tensor:
        """The first recorded loss: what the step's first backward would have differentiated.

        Raises:
            TrainingStepError: the step made no backward call.
        """
        if not self.calls:
            raise TrainingStepError(
                "the training step made no backward call through Tensor.backward or torch.autograd.backward, "
                "so there is no loss to take. A step that differentiates with torch.autograd.grad, or returns "
                "early (a KL early stop, an empty minibatch), cannot be captured this way."
            )
        return self.calls[0].loss

    def _record(self, call: BackwardCall) -> None:
        self.calls.append(call)
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            self.stopped = True
            raise _StepStopped

    def _hide_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # A learning-rate scheduler wraps its optimizer's step in an instance attribute, which the
        # class-level no-op cannot reach: that step runs, but finds no gradient, so changes nothing.
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                self._hidden.append((parameter, parameter.grad))
                parameter.grad = None

    def _show_gradients(self, *args: Any) -> None:
        for parameter, grad in reversed(self._hidden):
            parameter.grad = grad
        self._hidden.clear()

    def __enter__(self) -> TrainingStep:
        if _ACTIVE.active is not None:
            raise TrainingStepError("capture_loss() is already active: a capture cannot be nested in another.")
        self._saved_states = [(obj, copy.deepcopy(obj.state_dict())) for obj in self._restore]
        step = self

        def tensor_backward(
            self: torch.Tensor,
            gradient: torch.Tensor | None = None,
            retain_graph: bool | None = None,
            create_graph: bool = False,
            inputs: Any = None,
        ) -> None:
            step._record(
                BackwardCall(
                    tensors=(self,),
                    grad_tensors=None if gradient is None else (gradient,),
                    inputs=inputs,
                    retain_graph=retain_graph,
                    create_graph=create_graph,
                )
            )

        def autograd_backward(
            tensors: torch.Tensor | Sequence[torch.Tensor],
            grad_tensors: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
            retain_graph: bool | None = None,
            create_graph: bool = False,
            grad_variables: Any = None,
            inputs: Any = None,
        ) -> None:
            if isinstance(tensors, torch.Tensor):
                tensors = (tensors,)
            if isinstance(grad_tensors, torch.Tensor):
                grad_tensors = (grad_tensors,)
            step._record(
                BackwardCall(
                    tensors=tuple(tensors),
                    grad_tensors=None if grad_tensors is None else tuple(grad_tensors),
                    inputs=inputs,
                    retain_graph=retain_graph,
                    create_graph=create_graph,
                )
            )

        optimizers = _subclasses(torch.optim.Optimizer)
        schedulers = _subclasses(torch.optim.lr_scheduler.LRScheduler)
        scalers = _subclasses(torch.amp.GradScaler)
        replacements: list[tuple[Any, str, Any]] = [
            (torch.Tensor, "backward", tensor_backward),
            (torch.autograd, "backward", autograd_backward),
            (torch.nn.Module, "zero_grad", _nothing),
            (torch.nn.utils, "clip_grad_norm_", _zero_norm),
            (torch.nn.utils, "clip_grad_value_", _nothing),
            (torch.nn.utils.clip_grad, "clip_grad_norm_", _zero_norm),
            (torch.nn.utils.clip_grad, "clip_grad_value_", _nothing),
        ]
        for owner in (torch.nn.utils, torch.nn.utils.clip_grad):
            if hasattr(owner, "clip_grads_with_norm_"):  # torch >= 2.6: clipping by a norm computed apart
                replacements.append((owner, "clip_grads_with_norm_", _nothing))
        for owner, name in _own(optimizers, "step") + _own(optimizers, "zero_grad") + _own(schedulers, "step"):
            replacements.append((owner, name, _nothing))
        for owner, name in _own(scalers, "unscale_") + _own(scalers, "step") + _own(scalers, "update"):
            replacements.append((owner, name, _nothing))
        replacements += [(owner, name, _unscaled) for owner, name in _own(scalers, "scale")]
        self._saved_attributes = save_attributes((owner, name) for owner, name, _ in replacements)
        try:
            for owner, name, value in replacements:
                setattr(owner, name, value)
            self._hooks = [
                register_optimizer_step_pre_hook(self._hide_gradients),
                register_optimizer_step_post_hook(self._show_gradients),
            ]
        except BaseException:
            for hook in self._hooks:
                hook.remove()
            restore_attributes(self._saved_attributes)
            raise
        _ACTIVE.active = self
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            for hook in self._hooks:
                hook.remove()
            self._show_gradients()
            restore_attributes(self._saved_attributes)
            for obj, state in self._saved_states:
                obj.load_state_dict(state)
        finally:
            _ACTIVE.active = None
        return exc_type is _StepStopped


def capture_loss(*, stop_after: int | None = 1, restore: Iterable[Any] = ()) -> TrainingStep:
    """Run a library's training step and take the loss it would differentiate, without taking the step.

    Used as ``with capture_loss() as step: model.train()``, then ``step.loss``. Inside the block
    backward calls record their tensor and compute no gradient; optimizers, schedulers, gradient
    clipping and AMP's ``GradScaler`` change nothing; after the ``stop_after``-th backward call
    the step is stopped (so nothing after it runs) and the block ends there. Everything is
    restored on exit, exceptions included.

    Several backward calls (a PPO epoch's minibatches): with ``stop_after=k`` the first ``k`` are
    recorded, all at the parameters the step started from, since no optimizer step runs between
    them; ``step.losses`` lists them. ``stop_after=None`` lets the step run to its end.
    ``retain_graph`` does not matter: backward never runs, so every recorded graph stays alive
    for the check to differentiate. A ``GradScaler``'s ``scale`` returns its argument, so the
    recorded loss is the unscaled one.

    Arguments:
        stop_after: stop the step after this many backward calls (``None``: never).
        restore: objects with ``state_dict()``/``load_state_dict()`` whose state is put back on
            exit (an optimizer whose learning rate the step sets before its backward).

    Returns:
        A :class:`TrainingStep`; ``step.loss`` is the first recorded loss, ``step.losses`` all.

    Raises:
        TrainingStepError: on entry, when a capture is already active.

    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> opt = torch.optim.Adam([w], lr=0.1)
    >>> def train():
    ...     for target in (0.0, 1.0):
    ...         opt.zero_grad()
    ...         ((w - target) ** 2).sum().backward()
    ...         opt.step()
    >>> with capture_loss(stop_after=None) as step:
    ...     train()
    >>> [loss.item() for loss in step.losses], w.tolist(), opt.state == {}
    ([5.0, 1.0], [1.0, 2.0], True)
    """
    if stop_after is not None and not (isinstance(stop_after, int) and stop_after >= 1):
        raise TrainingStepError(f"stop_after must be a positive integer or None, not {stop_after!r}.")
    return TrainingStep(stop_after=stop_after, restore=tuple(restore))


def step_loss(
    step: Callable[..., Any], /, *args: Any, which: int = 0, restore: Iterable[Any] = (), **kwargs: Any
) -> torch.Tensor:
    """Call ``step(*args, **kwargs)`` and return the loss of its backward call number ``which``.

    The function form of :func:`capture_loss`: the step stops right after that call.

    Arguments:
        step: the library's training step (``model.train``, ``trainer.training_step``, ...).
        which: which backward call's loss to return, from 0 (the first).
        restore: as for :func:`capture_loss`.

    Raises:
        TrainingStepError: the step made fewer than ``which + 1`` backward calls.

    >>> w = torch.tensor(3.0, requires_grad=True)
    >>> def train():
    ...     (w * w).backward()
    ...     raise RuntimeError("never reached")
    >>> step_loss(train).item()
    9.0
    """
    if not (isinstance(which, int) and which >= 0):
        raise TrainingStepError(f"which must be a non-negative integer, not {which!r}.")
    with capture_loss(stop_after=which + 1, restore=restore) as captured:
        step(*args, **kwargs)
    if len(captured.calls) <= which:
        if not captured.calls:
            return captured.loss  # raises, saying there was no backward call
        raise TrainingStepError(
            f"the training step made {len(captured.calls)} backward call(s); call number {which} was asked for."
        )
    return captured.calls[which].loss
