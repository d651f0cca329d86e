"""Checking float32, float16 and bfloat16 code in float64, without editing it.

Exact sums over thousands of action sequences and central differences are trustworthy only in
float64, but models are float32 or bfloat16 and cast their own tensors (``.float()`` after
``torch.from_numpy``, ``dtype=torch.float32``, :class:`torch.autocast` regions). A check chooses
once, with :func:`choose_precision`, whether it *promotes*. When it does, for its whole duration
(:meth:`Precision.applied`):

* every lower-precision checked parameter holds a float64 copy of its values: its ``.data`` is
  swapped, so the tensor object, and any optimizer holding it, stays the same, and autograd
  differentiates with respect to the float64 values themselves (a cast back to float32 in between
  would round the gradient); its ``.grad`` is set aside;
* the buffers of a module passed as ``params`` run on copies (float64 ones for lower-precision
  buffers), so running statistics and counters updated in place are left as they were;
* every call of the episode (:meth:`Precision.episode`) runs under :class:`_Promote`, a
  :class:`~torch.overrides.TorchFunctionMode`, with float64 as torch's default dtype and autocast
  disabled.

Afterwards every parameter and buffer is the same object again, with its own dtype, bitwise the
same values, the same ``.grad`` and ``requires_grad``; the default dtype and the autocast state are
restored too, exceptions included.

What the mode sees, checked with torch 2.13: the functions of the ``torch`` namespace, factories
included (``torch.tensor``, ``torch.zeros``, ``torch.as_tensor``), ``torch.nn.functional`` and every
``Tensor`` method and operator. It does not see ``torch.from_numpy``: its float32 result is promoted
where it is first used, which also keeps it sharing memory with its array until then. For every
call it sees, it makes lower-precision floating tensor arguments float64 (except the tensor an
in-place operation or ``out=`` writes to), replaces lower-precision dtype arguments by float64,
turns ``.float()``, ``.half()`` and ``.bfloat16()`` into ``.double()`` and ``.type(torch.FloatTensor)``
into ``.type(torch.DoubleTensor)``, and makes lower-precision floating results float64. Assigning
``.data`` or ``.grad`` of a lower-precision tensor keeps its dtype, so that ``model.float()`` in the
episode leaves the model's tensors as they were.

The backward of a custom :class:`torch.autograd.Function` the episode applies runs under the mode
too: it runs after the episode call, in the check's own gradient computations, and may make
lower-precision tensors of its own (TRL's fused LM head accumulates its gradients in float32).
``Function.apply`` is replaced for each episode call, process-wide as ``autocast.__enter__`` is,
and applies a subclass of the Function whose backward enters the mode.

``torch._C.DisableTorchFunction`` turns modes off as well as subclass handlers: the samplers'
chooser, the check's own code, runs under it (:func:`unpromoted`).

Autocast never touches float64 tensors, but the check turns it off anyway inside the episode:
``torch.autocast`` regions the episode enters are entered disabled (``autocast.__enter__`` is
replaced for the call, process-wide, as the samplers are), and autocast already enabled where the
check was called is disabled for each episode call.

The limits (``docs/precision.rst`` says more): code the mode cannot see (C++ extensions, a
``torch.set_autocast_enabled`` call), numpy computations in float32, and lower-precision tensors that
existed before the check and are not checked parameters or the buffers of a module passed as
``params``: they are read as float64 copies where they are used, so writing into a view of one
does not reach it, and in-place updates of one run in its own dtype and are not undone.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .report import Note, OwnPrecision, PromotedEpisode

__all__ = ["Precision", "Tolerances", "choose_precision", "is_lower_precision", "promoting", "unpromoted"]


def is_lower_precision(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a real floating-point type less precise than float64: the types a check
    promotes, and the one rule that decides it.

    >>> is_lower_precision(torch.bfloat16), is_lower_precision(torch.float64), is_lower_precision(torch.int64)
    (True, False, False)
    """
    return dtype.is_floating_point and dtype != torch.float64


@dataclass(frozen=True)
class Tolerances:
    """The tolerances and the central-difference step of a check.

    >>> floor = Tolerances.resolvable(torch.float32)
    >>> f"{floor.rtol:.3g} {floor.fd_step:.3g}"
    '0.000345 0.00492'
    """

    rtol: float
    atol: float
    fd_step: float
    fd_rtol: float
    fd_atol: float

    @classmethod
    def resolvable(cls, dtype: torch.dtype) -> Tolerances:
        """The finest tolerances that a computation in ``dtype`` can meet, from its machine epsilon
        ``eps`` (``torch.finfo(dtype).eps``); the derivation is in :func:`~reinforce_check.check_reinforce`'s
        docstring.

        * Gradients: a gradient computed in ``dtype`` is off by about ``k * eps`` relative, ``k``
          growing with the depth of the computation and the number of sequences summed; ``sqrt(eps)``
          (3.5e-4 in float32) accepts ``k`` up to ``1 / sqrt(eps)`` (2,900 in float32, 11 in bfloat16)
          while a bias above ``sqrt(eps) * (1 + |grad J|)`` is still caught: ``rtol = atol = sqrt(eps)``.
        * Central differences: with step ``h`` their error is about ``eps * |J| / h`` (rounding)
          plus ``h**2 * |J'''| / 6`` (truncation), smallest for ``h = eps ** (1/3)``, where both are
          of order ``eps ** (2/3)``; ``fd_rtol = fd_atol = sqrt(eps)`` leaves a margin of
          ``eps ** (-1/6)`` (14 in float32) for the constants.

        The absolute tolerances assume gradients and objectives of order one, as the float64
        defaults do.
        """
        eps = torch.finfo(dtype).eps
        root = eps**0.5
        return cls(rtol=root, atol=root, fd_step=eps ** (1 / 3), fd_rtol=root, fd_atol=root)

    def at_least(self, floor: Tolerances) -> Tolerances:
        """Each value raised to ``floor``'s where it is finer."""
        return Tolerances(*(max(mine, least) for mine, least in zip(astuple(self), astuple(floor))))


@dataclass(frozen=True)
class Precision:
    """How a check computes, chosen once by :func:`choose_precision`."""

    promote: bool
    """Whether the episode runs promoted to float64."""
    dtype: torch.dtype
    """What the episode computes in: float64 when promoting, else the least precise parameter dtype."""
    lower: tuple[torch.dtype, ...]
    """The lower-precision dtypes among the checked parameters, least precise first."""
    converted: tuple[torch.Tensor, ...] = field(repr=False, compare=False)
    """The lower-precision checked parameters: float64 copies of their values while promoting."""
    buffers: tuple[torch.Tensor, ...] = field(repr=False, compare=False)
    """The buffers of the module passed as ``params``: copies of their values while promoting."""

    @property
    def name(self) -> str:
        """The dtype the episode computes in, as the report writes it: ``"float64"``, ``"float32"``."""
        return _dtype_name(self.dtype)

    def tolerances(self, given: Tolerances) -> Tolerances:
        """The tolerances the check uses: those given, raised to what the episode's precision can
        meet when it runs in a lower precision than float64."""
        if self.dtype == torch.float64:
            return given
        return given.at_least(Tolerances.resolvable(self.dtype))

    def episode(self, episode: Callable[..., Any]) -> Callable[..., Any]:
        """``episode``, each call of it promoted when the check promotes (else ``episode`` itself)."""
        if not self.promote:
            return episode

        @functools.wraps(episode)
        def promoted(*args: Any, **kwargs: Any) -> Any:
            with _promotion():
                return episode(*args, **kwargs)

        return promoted

    def applied(self) -> contextlib.AbstractContextManager[None]:
        """Around the whole check: when promoting, the parameters and buffers hold float64 copies
        (or plain copies) of their values, and get their own back at the end."""
        if not self.promote:
            return contextlib.nullcontext()
        return _float64_copies(list(self.converted), list(self.buffers))

    def note(self, used: Tolerances) -> Note | None:
        """What the report says about the precision, given the tolerances the check used."""
        if self.promote:
            return PromotedEpisode(
                dtypes=tuple(_dtype_name(d) for d in self.lower),
                parameters=len(self.converted),
                buffers=len(self.buffers),
            )
        if self.lower:
            return OwnPrecision(dtypes=tuple(_dtype_name(d) for d in self.lower), **vars(used))
        return None


def choose_precision(
    params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor], *, promote: bool | None
) -> Precision:
    """Whether a check promotes, and what its episode computes in.

    Arguments:
        params: the checked parameters (real floating-point tensors).
        buffers: the buffers of the module passed as ``params`` (none otherwise).
        promote: ``None``: promote when a parameter is of a lower precision than float64; ``True``:
            always (code that casts with ``.float()`` around float64 parameters); ``False``: never,
            the episode computes in the parameters' own dtypes.

    >>> theta = torch.zeros(2, requires_grad=True)  # float32
    >>> choose_precision([theta], [], promote=None).name
    'float64'
    >>> choose_precision([theta], [], promote=False).name
    'float32'
    """
    converted = tuple(p for p in params if is_lower_precision(p.dtype))
    lower = sorted({p.dtype for p in converted}, key=_eps, reverse=True)
    promoted = bool(lower) if promote is None else promote
    dtype = torch.float64 if promoted or not lower else lower[0]
    return Precision(promoted, dtype, tuple(lower), converted, tuple(buffers))


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- parameters and buffers ------------------------------------------------------------------------


@contextlib.contextmanager
def _float64_copies(params: list[torch.Tensor], buffers: list[torch.Tensor]) -> Iterator[None]:
    """``params`` (lower-precision) and ``buffers`` compute on copies of their values, float64 ones
    for lower-precision tensors, until the block ends; then each gets its own storage, ``.grad``
    and ``requires_grad`` back. Swapping ``.data`` keeps every tensor object (and what refers to
    it: modules, optimizers) the same, and the originals' storage is never written."""
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]] = []
    try:
        for tensor in [*params, *buffers]:
            # Reading .grad of a non-leaf warns; only leaves have one to set aside.
            grad = tensor.grad if tensor.is_leaf else None
            saved.append((tensor, tensor.data, grad, tensor.requires_grad))
            if grad is not None:
                tensor.grad = None  # a float32 .grad does not fit a float64 tensor
            data = tensor.data
            tensor.data = data.to(torch.float64, copy=True) if is_lower_precision(data.dtype) else data.clone()
        yield
    finally:
        for tensor, data, grad, requires_grad in reversed(saved):
            tensor.data = data
            if tensor.is_leaf:
                tensor.grad = grad
            if tensor.requires_grad != requires_grad:
                tensor.requires_grad_(requires_grad)


# --- episode calls ---------------------------------------------------------------------------------


class _State(threading.local):
    def __init__(self) -> None:
        # The caller's default dtype while an episode call is promoted (None when none is).
        self.default_dtype: torch.dtype | None = None


_STATE = _State()


def promoting() -> bool:
    """Whether a promoted episode call is running (in this thread).

    >>> promoting()
    False
    """
    return _STATE.default_dtype is not None


@contextlib.contextmanager
def unpromoted() -> Iterator[None]:
    """Run the check's own code, called from inside a promoted episode (the samplers' chooser), as
    written: without any torch function mode and with the caller's default dtype."""
    inside = _STATE.default_dtype
    if inside is None:
        yield
        return
    torch.set_default_dtype(inside)
    try:
        with torch._C.DisableTorchFunction():
            yield
    finally:
        torch.set_default_dtype(torch.float64)


@contextlib.contextmanager
def _promotion() -> Iterator[None]:
    """One episode call in float64: the mode, the default dtype, autocast off."""
    autocast = torch.amp.autocast_mode.autocast
    enter = vars(autocast)["__enter__"]
    previous = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        if torch._C._is_any_autocast_enabled():  # the check itself was called inside autocast
            for device in _autocast_devices():
                if torch.is_autocast_enabled(device):
                    stack.enter_context(autocast(device, enabled=False))
        autocast.__enter__ = _entered_disabled(enter)
        stack.callback(setattr, autocast, "__enter__", enter)
        function, apply = torch.autograd.Function, vars(torch.autograd.Function)["apply"]
        function.apply = _applied_with_promoted_backward(apply)
        stack.callback(setattr, function, "apply", apply)
        torch.set_default_dtype(torch.float64)
        stack.callback(torch.set_default_dtype, previous)
        _STATE.default_dtype = previous
        stack.callback(setattr, _STATE, "default_dtype", None)
        stack.enter_context(_Promote())
        yield


@functools.cache
def _entered_disabled(enter: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``autocast.__enter__`` that enters every autocast region disabled (subclasses such as
    ``torch.cpu.amp.autocast`` call it too); the object's own setting is left as it was."""

    @functools.wraps(enter)
    def entered_disabled(self: Any) -> Any:
        enabled, self._enabled = self._enabled, False
        try:
            return enter(self)
        finally:
            self._enabled = enabled

    return entered_disabled


@functools.cache
def _applied_with_promoted_backward(apply: classmethod) -> classmethod:  # type: ignore[type-arg]
    """``torch.autograd.Function.apply`` that applies each custom Function as
    :func:`_with_promoted_backward` of it: its backward runs after the episode call, in the
    check's own gradient computations, where the mode is off."""

    def applied(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
        return apply.__func__(_with_promoted_backward(cls), *args, **kwargs)

    return classmethod(applied)


@functools.cache
def _with_promoted_backward(cls: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """A subclass of the custom Function ``cls`` whose backward (or ``vjp``, whichever it defines)
    runs under :class:`_Promote`: a custom backward may make lower-precision tensors of its own
    (TRL's fused LM head accumulates its gradients in float32), which would round the gradient the
    check compares."""
    if getattr(cls, "_promoted_backward", False):
        return cls
    base = torch.autograd.Function
    own = "vjp" if cls.vjp is not base.vjp else "backward"
    user_fn = getattr(cls, own)

    @functools.wraps(user_fn)
    def promoted(ctx: Any, *grads: Any) -> Any:
        with _Promote():
            return user_fn(ctx, *grads)

    # The same names, so that graphs and messages read as before.
    names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), {own: staticmethod(promoted), "_promoted_backward": True, **names})


@functools.cache
def _autocast_devices() -> tuple[str, ...]:
    """The device types whose autocast state this torch build can report."""
    devices = []
    for device in ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "ipu", "mtia", "maia", "privateuseone"):
        try:
            torch.is_autocast_enabled(device)
        except RuntimeError:
            continue
        devices.append(device)
    return tuple(devices)


# Calls whose arguments and results stay as they are: attribute access (``.data``, ``.grad``, ``.T``:
# views that must keep aliasing their tensor, and assignments), identity and metadata.
_AS_IS = frozenset(
    {"__get__", "__set__", "__delete__", "__hash__", "data_ptr", "untyped_storage", "storage", "register_hook",
     "retain_grad", "size", "dim", "numel", "stride", "storage_offset", "is_contiguous", "element_size"}
)
_IN_PLACE_DUNDERS = frozenset(
    {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
     "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}
)
_CASTS = frozenset({torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16})
_TENSOR_TYPE = re.compile(r"(torch\.(?:cuda\.)?)(?:Float|Half|BFloat16)Tensor")


class _Promote(TorchFunctionMode):
    """Lower-precision floating tensors, dtypes and casts become float64 (see the module docstring).

    Torch turns the mode off while ``__torch_function__`` runs, so the casts made here are plain.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = {} if kwargs is None else kwargs
        name = getattr(func, "__name__", "")
        if name == "__set__" and getattr(getattr(func, "__self__", None), "__name__", "") in ("data", "grad"):
            # ``model.float()`` in the episode assigns ``param.data = param.double()`` (the mode's
            # .float()): a tensor that is not float64 keeps its dtype, so the model stays as it was.
            target, value = args
            if isinstance(value, torch.Tensor) and is_lower_precision(target.dtype) and value.dtype != target.dtype:
                args = (target, value.to(target.dtype))
            return func(*args, **kwargs)
        if name in _AS_IS:
            return func(*args, **kwargs)
        if func is torch.Tensor.view:
            # view(dtype) reinterprets bits: the arguments as given, a float32 view read as float64.
            return _widen(func(*args, **kwargs))
        if func in _CASTS:
            func = torch.Tensor.double
        elif func is torch.Tensor.type:
            args = tuple(_double_tensor_type(a) for a in args)
            kwargs = {k: _double_tensor_type(v) for k, v in kwargs.items()}
        # The tensor an in-place operation or out= writes to stays itself (a float32 buffer updated
        # in place); so does what such a call returns.
        in_place = (name.endswith("_") and not name.endswith("__")) or name in _IN_PLACE_DUNDERS
        written = 1 if in_place and args else 0
        args = (*args[:written], *(_promote(a) for a in args[written:]))
        kwargs = {k: v if k == "out" else _promote(v) for k, v in kwargs.items()}
        result = func(*args, **kwargs)
        if in_place or "out" in kwargs:
            return result
        return _widen(result)


def _promote(value: Any) -> Any:
    """An argument, a lower-precision floating tensor or dtype made float64 (also inside a list or
    tuple, as ``torch.cat`` takes them)."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if is_lower_precision(value.dtype) else value
    if isinstance(value, torch.dtype):
        return torch.float64 if is_lower_precision(value) else value
    if type(value) in (list, tuple):
        promoted = [_promote(v) for v in value]
        if any(p is not v for p, v in zip(promoted, value)):
            return type(value)(promoted)
    return value


def _widen(result: Any) -> Any:
    """A result, lower-precision floating tensors in it made float64 (a tensor, or a tuple or list
    of them such as ``torch.max`` returns)."""
    if isinstance(result, torch.Tensor):
        return result.to(torch.float64) if is_lower_precision(result.dtype) else result
    if isinstance(result, (list, tuple)) and result:
        widened = [_widen(r) for r in result]
        if all(w is r for w, r in zip(widened, result)):
            return result
        if type(result) in (list, tuple):
            return type(result)(widened)
        if type(result).__module__ == "torch.return_types":  # structseq: built from a sequence
            return type(result)(widened)
    return result


def _double_tensor_type(value: Any) -> Any:
    """``torch.FloatTensor`` (the type or its name, also half, bfloat16 and CUDA ones) as the
    matching double tensor type's name, which ``Tensor.type`` accepts."""
    if isinstance(value, type):  # torch.FloatTensor and its kin are instances of torch.tensortype
        value = f"{value.__module__}.{value.__name__}"
    if isinstance(value, str):
        return _TENSOR_TYPE.sub(r"\1DoubleTensor", value) if _TENSOR_TYPE.fullmatch(value) else value
    return value
