"""Recording the graph of marked code through its gradient-off regions, during a check.

PPO and A2C code samples its rollouts under ``torch.no_grad()``, and ``transformers``'
``generate()`` is decorated with ``@torch.no_grad()``: the probabilities reaching the sampler carry
no gradient, so autograd's -grad J cannot see their score terms. During a check, code marked with
:func:`~reinforce_check.enumerate_actions` runs inside :func:`begin` ... :func:`end`, which keep
gradient recording on whatever the code asks for, and keep what it asks for as a *virtual* grad
mode:

* ``torch.no_grad()``, ``torch.enable_grad()`` and ``torch.set_grad_enabled()`` (context managers,
  decorators or functions) change the virtual mode only, and the caller's grad mode is the virtual
  mode the marked code starts with.
* Every tensor the code gets is what a real run makes. An operation that a real run makes without
  recording (the virtual mode off, or on with no input that carries gradient) is run recorded on
  the inputs' *recorded forms*, and the code gets the result detached, its recorded form kept aside
  (a :class:`~torch.overrides.TorchFunctionMode` does this, operation by operation). An operation
  that mixes tensors with recorded forms and tensors that carry gradient for real (a head with
  gradient on features made under ``torch.no_grad()``) runs twice: as a real run makes it, and
  recorded. So the code sees the values, ``requires_grad`` and ``grad_fn`` it sees outside a check,
  and so does the caller, whatever reaches it (the return value, an attribute, a buffer).
* A sampler call inside marked code draws from the recorded form of its probabilities
  (:func:`draws`), which carries their dependence on the parameters.
* In-place changes are mirrored on the recorded forms. One made with the virtual mode off, of a
  tensor whose storage the marked code did not make (the caller's buffers, the parameters, a
  module's state), runs with recording really off, as a real run makes it.
* Tensors saved for the backward pass of recorded operations are copies (a saved-tensor hook), so
  that an in-place change afterwards (a static KV cache, a buffer filled step by step) cannot
  break the backward pass. Other saved tensors keep autograd's check that they did not change.
* When the marked code ends, the caller gets the grad mode the code leaves, the virtual one. A
  tensor it got and passes, unchanged, to marked code later in the same episode run (a recurrent
  state) comes with its recorded form.

``torch.is_grad_enabled()`` inside marked code answers the real mode, ``True``: code asks it to
choose between a differentiable path and a faster one that is not (``nn.MultiheadAttention``'s
fast path, custom kernels), and the path taken here must be differentiable. Inside
``torch.inference_mode()`` nothing can be recorded: marked code there runs as it is.

Wherever a recorded form is lost (changed outside marked code, a different episode run, an
in-place change of a tensor made elsewhere) the code still gets what a real run gets, and the
recorded graph misses that path: central differences of the exact J, which always cross-check a
recorded graph, then disagree with autograd and decide.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.autograd import grad_mode
from torch.overrides import TorchFunctionMode
from torch.utils._contextlib import _DecoratorContextManager

from . import scope
from .patching import restore_attributes, save_attributes

__all__ = ["Recording", "active", "begin", "draw_recorded", "draws", "end"]

F = TypeVar("F", bound=Callable[..., Any])

_set_real = torch._C._set_grad_enabled


class _Entry:
    """The recorded form of a tensor the marked code got."""

    __slots__ = ("alias", "recorded", "run", "sealed", "tensor")

    def __init__(self, tensor: torch.Tensor, run: int, recorded: torch.Tensor, alias: bool) -> None:
        self.tensor = weakref.ref(tensor)
        self.run = run
        self.recorded = recorded
        self.alias = alias
        """Whether the tensor is ``recorded.detach()`` (same storage); else a separate computation."""
        self.sealed: int | None = None
        """The tensor's version when marked code last ended; a change since loses the recorded form."""


class _State(threading.local):
    def __init__(self) -> None:
        self.active = False
        """Whether marked code records its graph in this thread now."""
        self.virtual = True
        """The grad mode the marked code would run with."""
        self.copying = False
        """Whether the operation running now is recorded where a real run records nothing."""
        self.paused = False
        """Whether a chooser is running (its operations are its own)."""
        self.draw_recorded = False
        """Whether the chooser running now draws from a recorded form."""
        self.run = 0
        """The check's episode run that the marked code runs in."""
        self.storages: set[int] = set()
        """Storages (data pointers) that the running marked code made where a real run records nothing."""
        self.entries: dict[int, _Entry] = {}
        """``id`` of a tensor the marked code got -> its :class:`_Entry` (which checks the tensor is
        still that one); entries of dead tensors and earlier runs are dropped now and then."""
        self.purge_at = _PURGE_AT
        self.unsealed: list[_Entry] = []


_PURGE_AT = 4096
_STATE = _State()


def active() -> bool:
    """Whether marked code records its graph in this thread now.

    >>> active()
    False
    """
    return _STATE.active


def draw_recorded() -> bool:
    """Whether the chooser running now (see :func:`draws`) draws from probabilities that carry
    gradient only because marked code recorded their graph.

    >>> draw_recorded()
    False
    """
    return _STATE.draw_recorded


def draws(choose: F) -> F:
    """Decorate a chooser's ``choose(self, weights, ...)``: inside marked code that records its
    graph, it gets the recorded form of ``weights``, and its own operations are not recorded forms.
    """

    @functools.wraps(choose)
    def recorded_choose(self: Any, weights: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not _STATE.active:
            return choose(self, weights, *args, **kwargs)
        recorded = _recorded_form(weights)
        before = _STATE.paused, _STATE.draw_recorded
        _STATE.paused = True
        _STATE.draw_recorded = recorded is not None and recorded.requires_grad
        try:
            return choose(self, weights if recorded is None else recorded, *args, **kwargs)
        finally:
            _STATE.paused, _STATE.draw_recorded = before

    return recorded_choose  # type: ignore[return-value]


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
"""The grad-mode context managers' methods that recording replaces while marked code runs."""


# Recorded forms.

_DIFFERENTIABLE_PROPERTIES = frozenset({"T", "mT", "H", "mH", "real", "imag"})
"""Tensor properties that are operations; the others (``requires_grad``, ``grad_fn``, ``data``,
``shape``, ...) describe the tensor the code holds."""
_AS_HELD = frozenset(
    {
        "requires_grad_", "retain_grad", "register_hook", "register_post_accumulate_grad_hook", "backward",
        "detach", "detach_", "numpy", "__array__", "tolist", "item", "__repr__", "__format__",
        "__deepcopy__", "__reduce_ex__", "__getstate__", "__setstate__", "data_ptr", "untyped_storage",
        "storage", "_typed_storage", "__set__", "__delete__", "is_inference",
    }
)
"""Methods about the tensor the code holds rather than operations on its values."""
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


def _swap(value: Any, forms: dict[int, torch.Tensor]) -> Any:
    """``value`` with every tensor that has a recorded form replaced by it."""
    if isinstance(value, torch.Tensor):
        return forms.get(id(value), value)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) and id(v) in forms for v in value):
        return type(value)(forms.get(id(v), v) if isinstance(v, torch.Tensor) else v for v in value)
    return value


def _swapped(args: tuple[Any, ...], kwargs: dict[str, Any], forms: dict[int, torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return tuple(_swap(a, forms) for a in args), {k: _swap(v, forms) for k, v in kwargs.items()}


def _storage(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
        return 0


def _entry(tensor: torch.Tensor) -> _Entry | None:
    """The tensor's entry, if its recorded form is still good."""
    entry = _STATE.entries.get(id(tensor))
    if entry is None or entry.run != _STATE.run or entry.tensor() is not tensor:
        return None
    if entry.sealed is not None and tensor._version != entry.sealed:
        return None
    return entry


def _recorded_form(tensor: torch.Tensor) -> torch.Tensor | None:
    entry = _entry(tensor)
    return None if entry is None else entry.recorded


def _remember(tensor: torch.Tensor, recorded: torch.Tensor, *, alias: bool) -> None:
    state = _STATE
    entry = _Entry(tensor, state.run, recorded, alias)
    state.entries[id(tensor)] = entry
    state.unsealed.append(entry)
    if len(state.entries) > state.purge_at:
        state.entries = {k: e for k, e in state.entries.items() if e.tensor() is not None}
        state.purge_at = max(_PURGE_AT, 2 * len(state.entries))


def _touched(entry: _Entry) -> None:
    """The marked code changed a tensor in place, and its recorded form with it."""
    if entry.sealed is not None:
        entry.sealed = None
        _STATE.unsealed.append(entry)


def _recording_anyway(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an operation recorded; the tensors it saves for the backward pass are copied."""
    before = _STATE.copying
    _STATE.copying = True
    try:
        return func(*args, **kwargs)
    finally:
        _STATE.copying = before


def _handed_back(recorded: torch.Tensor, held: list[torch.Tensor], forms: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """The input an operation handed back as it is (``x.to(x.dtype)``), if it did."""
    for tensor in held:
        if recorded is tensor or recorded is forms.get(id(tensor)):
            return tensor
    return None


def _as_got(result: Any, held: list[torch.Tensor], forms: dict[int, torch.Tensor]) -> Any:
    """What the code gets of a recorded result: each tensor detached, its recorded form kept (an
    input handed back as it is stays the input)."""

    def got(recorded: torch.Tensor) -> torch.Tensor:
        same = _handed_back(recorded, held, forms)
        if same is not None:
            return same
        tensor = recorded.detach()
        _remember(tensor, recorded, alias=True)
        return tensor

    if isinstance(result, torch.Tensor):
        return got(result)
    if isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
        items = [got(r) if isinstance(r, torch.Tensor) else r for r in result]
        return items if type(result) is list else type(result)(items)
    return result


def _note_made(result: Any, held: list[torch.Tensor], forms: dict[int, torch.Tensor]) -> None:
    """Note the storages a recorded operation made: those of its results that are neither inputs nor
    views of an input's storage (a view made inside the operation, as ``F.linear`` returns for a
    vector, has a storage of its own)."""
    if isinstance(result, torch.Tensor):
        outputs: Any = (result,)
    elif isinstance(result, (tuple, list)):
        outputs = result
    else:
        return
    taken: set[int] | None = None
    for output in outputs:
        if not isinstance(output, torch.Tensor) or _handed_back(output, held, forms) is not None:
            continue
        pointer = _storage(output)
        if not pointer:
            continue
        if output._base is not None:
            if taken is None:
                taken = {_storage(forms.get(id(t), t)) for t in held}
            if pointer in taken:
                continue
        _STATE.storages.add(pointer)


def _pair(real: Any, recorded: Any) -> None:
    """Keep ``recorded``'s tensors as the recorded forms of ``real``'s (separate computations)."""
    if isinstance(real, torch.Tensor) and isinstance(recorded, torch.Tensor):
        _remember(real, recorded, alias=False)
    elif isinstance(real, (tuple, list)) and isinstance(recorded, (tuple, list)):
        for a, b in zip(real, recorded):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                _remember(a, b, alias=False)


class _Provenance(TorchFunctionMode):
    """Active while marked code records its graph (see the module's docstring)."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if _STATE.paused:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _AS_HELD or (name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") not in _DIFFERENTIABLE_PROPERTIES):
            return func(*args, **kwargs)
        tensors = _tensors(args, kwargs)
        forms: dict[int, torch.Tensor] = {}
        if _STATE.entries:
            for tensor in tensors:
                form = _recorded_form(tensor)
                if form is not None:
                    forms[id(tensor)] = form
        gradient_off = not _STATE.virtual and torch._C.is_grad_enabled()
        target = _inplace_target(name, args, kwargs)
        if target is not None:
            return _in_place(func, args, kwargs, target, forms, gradient_off)
        if not gradient_off:
            if not forms:
                return func(*args, **kwargs)
            if any(t.requires_grad for t in tensors):
                # Some inputs carry gradient for real: run as a real run makes it, and recorded.
                real = func(*args, **kwargs)
                recorded = _recording_anyway(func, *_swapped(args, kwargs, forms))
                _note_made(recorded, tensors, forms)
                _pair(real, recorded)
                return real
        if forms:
            args, kwargs = _swapped(args, kwargs, forms)
        result = _recording_anyway(func, args, kwargs)
        _note_made(result, tensors, forms)
        return _as_got(result, tensors, forms)


def _without_recording(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _set_real(False)
    try:
        return func(*args, **kwargs)
    finally:
        _set_real(True)


def _in_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], target: torch.Tensor, forms: dict[int, torch.Tensor], gradient_off: bool
) -> Any:
    """An in-place change of ``target``, mirrored on its recorded form."""
    entry = _entry(target) if id(target) in forms else None
    if entry is None:
        # Made outside marked code, or for real: as a real run changes it.
        return _without_recording(func, args, kwargs) if gradient_off else func(*args, **kwargs)
    recorded_args, recorded_kwargs = _swapped(args, kwargs, forms)
    if entry.alias:
        if _storage(entry.recorded) not in _STATE.storages:
            # A view of a tensor made elsewhere (the caller's buffer): as a real run changes it.
            return _without_recording(func, args, kwargs) if gradient_off else func(*args, **kwargs)
        sources = [t for t in _tensors(args, kwargs) if t is not target]
        if not gradient_off and any(t.requires_grad for t in sources):
            # The tensor gets gradient for real: as a real run changes it; its recorded form is lost.
            del _STATE.entries[id(target)]
            return func(*args, **kwargs)
        result = _recording_anyway(func, recorded_args, recorded_kwargs)
        _touched(entry)
        return target if result is entry.recorded else result
    # A separate computation: change both.
    real = _without_recording(func, args, kwargs) if gradient_off else func(*args, **kwargs)
    _recording_anyway(func, recorded_args, recorded_kwargs)
    _touched(entry)
    return real


# Saved tensors.


class _Saved:
    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor, version: int | None) -> None:
        self.tensor = tensor
        self.version = version


def _pack(tensor: torch.Tensor) -> _Saved:
    if _STATE.copying and not (tensor.is_leaf and tensor.requires_grad):
        # Saved by a recorded operation: the code may change the tensor in place afterwards.
        return _Saved(tensor.detach().clone(), None)
    return _Saved(tensor, tensor._version)


def _unpack(saved: _Saved) -> torch.Tensor:
    if saved.version is not None and saved.tensor._version != saved.version:
        # What autograd says when no hook intervenes (the hook takes its check's place).
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace "
            f"operation: [{saved.tensor.type()} {list(saved.tensor.shape)}] is at version "
            f"{saved.tensor._version}; expected version {saved.version} instead."
        )
    return saved.tensor


# Beginning and end.


class Recording:
    """What :func:`begin` changed, for :func:`end` to restore."""

    def __init__(self) -> None:
        self.saved = save_attributes([(owner, name) for owner, name, _ in _PATCHES])
        self.mode = _Provenance()
        self.hooks = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


def begin() -> Recording | None:
    """Start recording the graph of the marked code about to run, if a check asks for it and none
    is being recorded; ``None`` otherwise (under ``torch.inference_mode()`` too).

    >>> begin() is None  # no check is running
    True
    """
    if _STATE.active or not scope.records() or torch.is_inference_mode_enabled():
        return None
    recording = Recording()
    state = _STATE
    state.virtual = torch.is_grad_enabled()
    if state.run != scope.run():
        # A new episode run: what earlier runs recorded is of no use (and holds their graphs).
        state.run = scope.run()
        state.entries = {}
    state.storages = set()
    state.active = True
    try:
        for owner, name, replacement in _PATCHES:
            setattr(owner, name, replacement)
        _set_real(True)
        recording.mode.__enter__()
        recording.hooks.__enter__()
    except BaseException:
        end(recording)
        raise
    return recording


def end(recording: Recording) -> None:
    """Stop recording: the hooks, the torch-function mode and the grad-mode context managers as they
    were, and the grad mode the marked code leaves."""
    state = _STATE
    try:
        recording.hooks.__exit__(None, None, None)
    finally:
        try:
            recording.mode.__exit__(None, None, None)
        finally:
            state.active = False
            state.copying = False
            state.storages = set()
            restore_attributes(recording.saved)
            _set_real(state.virtual)
            for entry in state.unsealed:
                tensor = entry.tensor()
                if tensor is not None and entry.sealed is None:
                    entry.sealed = tensor._version
            state.unsealed = []
            # Only tensors the code still holds can come back with their recorded forms.
            state.entries = {k: e for k, e in state.entries.items() if e.tensor() is not None}
            state.purge_at = max(_PURGE_AT, 2 * len(state.entries))
