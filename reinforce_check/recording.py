"""Recording the graph of marked code through its gradient-off regions, during a check.

PPO and A2C code samples its rollouts under ``torch.no_grad()``, and ``transformers``'
``generate()`` is decorated with ``@torch.no_grad()``: the probabilities reaching the sampler carry
no gradient, so autograd's -grad J cannot see their score terms. During a check, a function marked
with :func:`~reinforce_check.enumerate_actions` runs through :func:`call`, which keeps gradient
recording on whatever the code asks for, and keeps what it asks for as a *virtual* grad mode:

* ``torch.no_grad()``, ``torch.enable_grad()`` and ``torch.set_grad_enabled()`` (context managers,
  decorators or functions) change the virtual mode only, and the caller's grad mode is the virtual
  mode the function starts with. Recording stays on, so the probabilities reaching the sampler carry
  their dependence on the parameters.
* Everything else stays as a real run has it. A :class:`~torch.overrides.TorchFunctionMode` notes
  the tensors that a real run makes without gradient (*tainted* tensors: made with the virtual
  mode off, or with it on from tainted tensors only), which here carry a recorded graph. An
  operation made with the virtual mode on from tainted and untainted tensors that carry gradient
  takes the tainted ones detached, as a real run has them (the recorded graph loses that path). An
  in-place change made with the virtual mode off, of a tensor whose storage was not made there (the
  caller's buffers, the parameters, a module's state), runs with recording really off. ``numpy()``,
  ``__array__`` and ``__deepcopy__`` get tainted tensors detached.
* Tensors saved for the backward pass where a real run records nothing are copies (a saved-tensor
  hook), so that an in-place change afterwards (a static KV cache, a buffer filled step by step)
  cannot break the backward pass. Other saved tensors keep autograd's check that they did not
  change.
* When the function returns, every tainted tensor it returns is detached (in tuples, lists, dicts,
  named tuples and dataclasses, ``transformers``' ``ModelOutput`` among them), and the caller gets
  the grad mode the function leaves, the virtual one. A detached tensor handed back this way and
  passed, unchanged, to a marked function later in the same episode run (a recurrent state) enters
  it as the recorded tensor it was.

``torch.is_grad_enabled()`` inside marked code answers the real mode, ``True``: code asks it to
choose between a differentiable path and a faster one that is not (``nn.MultiheadAttention``'s
fast path, custom kernels), and the path taken here must be differentiable. Inside
``torch.inference_mode()`` nothing can be recorded: marked code there runs as it is.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import grad_mode
from torch.overrides import TorchFunctionMode
from torch.utils._contextlib import _DecoratorContextManager
from torch.utils.weak import WeakIdKeyDictionary

from . import scope
from .patching import restore_attributes, save_attributes

__all__ = ["active", "call", "recorded"]

_set_real = torch._C._set_grad_enabled


class _State(threading.local):
    def __init__(self) -> None:
        self.active = False
        """Whether a marked function records its graph in this thread now."""
        self.virtual = True
        """The grad mode the marked code would run with."""
        self.copying = False
        """Whether the operation running now records where a real run would not."""
        self.run = 0
        """The check's episode run that the marked code runs in."""
        self.storages: set[int] = set()
        """Storages (data pointers) that the running marked call made where a real run records nothing."""
        self.records = WeakIdKeyDictionary()
        """Tainted tensor -> ``(run, None, None)``; detached tensor handed back to a caller ->
        ``(run, recorded tensor, version handed back)``."""


_STATE = _State()


def active() -> bool:
    """Whether a marked function records its graph in this thread now.

    >>> active()
    False
    """
    return _STATE.active


def recorded(weights: torch.Tensor) -> bool:
    """Whether probabilities reaching a sampler now carry a graph that a real run would not record.

    >>> recorded(torch.ones(2, requires_grad=True) * 2)
    False
    """
    if not _STATE.active or weights.grad_fn is None:
        return False
    entry = _STATE.records.get(weights)
    return entry is not None and entry[0] == _STATE.run and entry[1] is None


# The virtual grad mode.


def _virtual_here() -> bool:
    """Whether a grad-mode change made now is virtual."""
    return _STATE.active and not torch.is_inference_mode_enabled()


def _set_virtual(mode: bool) -> None:
    _STATE.virtual = bool(mode)
    _set_real(True)


_NO_GRAD_ENTER = grad_mode.no_grad.__enter__
_NO_GRAD_EXIT = grad_mode.no_grad.__exit__
_ENABLE_GRAD_ENTER = grad_mode.enable_grad.__enter__
_ENABLE_GRAD_EXIT = grad_mode.enable_grad.__exit__
_SET_INIT = grad_mode.set_grad_enabled.__init__
_SET_CALL = grad_mode.set_grad_enabled.__call__
_SET_ENTER = grad_mode.set_grad_enabled.__enter__
_SET_EXIT = grad_mode.set_grad_enabled.__exit__


def _no_grad_enter(self: Any) -> None:
    if not _virtual_here():
        return _NO_GRAD_ENTER(self)
    self.prev = _STATE.virtual
    _set_virtual(False)


def _no_grad_exit(self: Any, *exc: Any) -> None:
    if not _virtual_here():
        return _NO_GRAD_EXIT(self, *exc)
    _set_virtual(self.prev)


def _enable_grad_enter(self: Any) -> None:
    if not _virtual_here():
        return _ENABLE_GRAD_ENTER(self)
    self.prev = _STATE.virtual
    _set_virtual(True)


def _enable_grad_exit(self: Any, *exc: Any) -> None:
    if not _virtual_here():
        return _ENABLE_GRAD_EXIT(self, *exc)
    _set_virtual(self.prev)


def _set_init(self: Any, mode: bool) -> None:
    if not _virtual_here():
        return _SET_INIT(self, mode)
    self.prev = _STATE.virtual
    self.mode = mode
    _set_virtual(mode)


def _set_call(self: Any, function: Any) -> Any:
    if not _virtual_here():
        return _SET_CALL(self, function)
    _set_virtual(self.prev)
    return _DecoratorContextManager.__call__(self, function)


def _set_enter(self: Any) -> None:
    if not _virtual_here():
        return _SET_ENTER(self)
    _set_virtual(self.mode)


def _set_exit(self: Any, *exc: Any) -> None:
    if not _virtual_here():
        return _SET_EXIT(self, *exc)
    _set_virtual(self.prev)


_PATCHES: list[tuple[Any, str, Callable[..., Any]]] = [
    (grad_mode.no_grad, "__enter__", _no_grad_enter),
    (grad_mode.no_grad, "__exit__", _no_grad_exit),
    (grad_mode.enable_grad, "__enter__", _enable_grad_enter),
    (grad_mode.enable_grad, "__exit__", _enable_grad_exit),
    (grad_mode.set_grad_enabled, "__init__", _set_init),
    (grad_mode.set_grad_enabled, "__call__", _set_call),
    (grad_mode.set_grad_enabled, "__enter__", _set_enter),
    (grad_mode.set_grad_enabled, "__exit__", _set_exit),
]
"""The grad-mode context managers' methods that a recording call replaces while it runs."""


# What a real run makes of each operation.

_DETACHED_SELF = frozenset({"numpy", "__array__", "__deepcopy__"})
"""Tensor methods that refuse a tensor that requires grad: they get tainted tensors detached."""
_NOT_INPLACE = frozenset({"requires_grad_", "retain_grad", "detach_", "share_memory_"})
"""Methods whose trailing underscore does not mean a change of the tensor's values."""
_NOT_AUGMENTED = frozenset({"__index__", "__int__", "__invert__", "__iter__", "__init__", "__init_subclass__"})


def _inplace_target(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The tensor an operation changes in place, if it changes one."""
    out = kwargs.get("out")
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    if kwargs.get("inplace") is True or name == "__setitem__":
        return args[0]
    if name.startswith("__i") and name.endswith("__") and name not in _NOT_AUGMENTED:
        return args[0]
    if name.endswith("_") and not name.endswith("__") and name not in _NOT_INPLACE:
        return args[0]
    return None


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors an operation takes, as arguments or in a list or tuple argument."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [r for r in result if isinstance(r, torch.Tensor)]
    return []


def _map(value: Any, form: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return form(value)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(form(v) if isinstance(v, torch.Tensor) else v for v in value)
    return value


def _storage(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
        return 0


def _tainted(tensor: torch.Tensor) -> bool:
    """Whether a real run of this episode run makes ``tensor`` without gradient (and here it has some)."""
    if tensor.grad_fn is None:
        return False
    entry = _STATE.records.get(tensor)
    return entry is not None and entry[0] == _STATE.run and entry[1] is None


def _as_made(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a real run has it."""
    return tensor.detach() if _tainted(tensor) else tensor


def _resolved(tensor: torch.Tensor) -> torch.Tensor:
    """What an operation takes for ``tensor``: the recorded tensor behind a detached one handed back
    in this episode run, unchanged since; a tensor tainted in an earlier run (its graph used up),
    detached; else ``tensor`` itself."""
    entry = _STATE.records.get(tensor)
    if entry is None:
        return tensor
    run, recorded_tensor, version = entry
    if run != _STATE.run:
        return tensor.detach() if tensor.grad_fn is not None else tensor
    if recorded_tensor is not None and tensor._version == version:
        return recorded_tensor
    return tensor


def _taint(outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> None:
    """Note ``outputs`` as tainted, and the storages among them that the operation made."""
    records, run, storages = _STATE.records, _STATE.run, _STATE.storages
    taken = {_storage(t) for t in inputs}
    for output in outputs:
        records[output] = (run, None, None)
        pointer = _storage(output)
        if pointer and pointer not in taken:
            storages.add(pointer)


def _recording_anyway(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an operation that a real run does not record; the tensors it saves are copied."""
    before = _STATE.copying
    _STATE.copying = True
    try:
        return func(*args, **kwargs)
    finally:
        _STATE.copying = before


class _Provenance(TorchFunctionMode):
    """Active while a marked function records its graph (see the module's docstring)."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if len(_STATE.records):
            args = tuple(_map(a, _resolved) for a in args)
            kwargs = {k: _map(v, _resolved) for k, v in kwargs.items()}
        name = getattr(func, "__name__", "")
        target = _inplace_target(name, args, kwargs)
        if not _STATE.virtual and torch._C.is_grad_enabled():
            return _gradient_off(func, name, target, args, kwargs)
        return _gradient_on(func, name, target, args, kwargs)


def _gradient_off(
    func: Any, name: str, target: torch.Tensor | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """An operation made where a real run records nothing: recorded, its results tainted."""
    if target is not None:
        if _storage(target) in _STATE.storages:
            return _recording_anyway(func, args, kwargs)
        # Made before (the caller's buffer, a parameter, a module's state): a real run changes it
        # without recording, and so does this one.
        _set_real(False)
        try:
            return func(*args, **kwargs)
        finally:
            _set_real(True)
    if name in _DETACHED_SELF and args and isinstance(args[0], torch.Tensor):
        args = (args[0].detach(), *args[1:])
    result = _recording_anyway(func, args, kwargs)
    _taint(_outputs(result), _tensors(args, kwargs))
    return result


def _gradient_on(
    func: Any, name: str, target: torch.Tensor | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """An operation made where a real run records: as a real run makes it, but for a result made
    from tainted tensors only, which is recorded and tainted."""
    tensors = _tensors(args, kwargs)
    tainted = {id(t) for t in tensors if _tainted(t)}
    if not tainted:
        return func(*args, **kwargs)
    if name in _DETACHED_SELF:
        return func(*_map(args, _as_made), **kwargs)
    if target is not None:
        if id(target) in tainted:
            return _recording_anyway(func, args, kwargs)
        sources = (args[0], *(_map(a, _as_made) for a in args[1:]))
        return func(*sources, **{k: (v if k == "out" else _map(v, _as_made)) for k, v in kwargs.items()})
    if any(t.requires_grad and id(t) not in tainted for t in tensors):
        # Some inputs carry gradient in a real run too: as a real run makes it. The recorded graph
        # loses the tainted inputs' path; if probabilities depend on it, central differences decide.
        return func(*(_map(a, _as_made) for a in args), **{k: _map(v, _as_made) for k, v in kwargs.items()})
    result = _recording_anyway(func, args, kwargs)
    _taint(_outputs(result), tensors)
    return result


# Saved tensors.


class _Saved:
    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor, version: int | None) -> None:
        self.tensor = tensor
        self.version = version


def _pack(tensor: torch.Tensor) -> _Saved:
    if _STATE.copying and not (tensor.is_leaf and tensor.requires_grad):
        # Saved where a real run saves nothing, so the code may change it in place afterwards.
        return _Saved(tensor.detach().clone(), None)
    return _Saved(tensor, tensor._version)


def _unpack(saved: _Saved) -> torch.Tensor:
    if saved.version is not None and saved.tensor._version != saved.version:
        # What autograd says when nothing intervenes (the hook takes its check's place).
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace "
            f"operation: [{saved.tensor.type()} {list(saved.tensor.shape)}] is at version "
            f"{saved.tensor._version}; expected version {saved.version} instead."
        )
    return saved.tensor


# What the caller gets.


def _hand_back(tensor: torch.Tensor) -> torch.Tensor:
    if not _tainted(tensor):
        return tensor
    detached = tensor.detach()
    _STATE.records[detached] = (_STATE.run, tensor, detached._version)
    return detached


def _handed_back(value: Any) -> Any:
    """``value`` with every tainted tensor detached; containers are rebuilt only where something
    changed."""
    if isinstance(value, torch.Tensor):
        return _hand_back(value)
    if isinstance(value, (list, tuple)):
        items = [_handed_back(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        if isinstance(value, list):
            return items
        if hasattr(value, "_fields"):  # a named tuple
            return type(value)(*items)
        try:
            return type(value)(items)
        except TypeError:
            return tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for field in dataclasses.fields(value):
            if field.init and hasattr(value, field.name):
                current = getattr(value, field.name)
                new = _handed_back(current)
                if new is not current:
                    changes[field.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, dict):
        changed = {k: _handed_back(v) for k, v in value.items()}
        if all(changed[k] is v for k, v in value.items()):
            return value
        if type(value) is dict:
            return changed
        copy = value.copy()
        copy.update(changed)
        return copy
    return value


def call(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``function(*args, **kwargs)``, recording its graph through its gradient-off regions.

    Everything is restored when it returns or raises: the grad-mode context managers, the grad mode
    (to the virtual one, as a real run leaves it), the torch-function mode and the saved-tensor
    hooks. Under ``torch.inference_mode()`` the function runs as it is.

    >>> w = torch.ones(2, requires_grad=True)
    >>> @torch.no_grad()
    ... def double():
    ...     return w * 2
    >>> double().grad_fn is None and call(double, (), {}).grad_fn is None
    True
    """
    if torch.is_inference_mode_enabled():
        return function(*args, **kwargs)
    saved = save_attributes([(owner, name) for owner, name, _ in _PATCHES])
    state = _STATE
    state.virtual = torch.is_grad_enabled()
    state.run = scope.run()
    state.storages = set()
    state.active = True
    try:
        for owner, name, replacement in _PATCHES:
            setattr(owner, name, replacement)
        _set_real(True)
        with _Provenance(), torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            result = function(*args, **kwargs)
    finally:
        state.active = False
        state.copying = False
        state.storages = set()
        restore_attributes(saved)
        _set_real(state.virtual)
    return _handed_back(result)
