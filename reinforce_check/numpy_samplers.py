"""Interception of numpy's and Python's categorical samplers.

Tutorials and real code often sample actions outside torch::

    action = np.random.choice(n, p=probs.detach().numpy())
    action = np.random.default_rng(seed).choice(n, p=probs)
    action = random.choices(range(n), weights=probs)[0]

While a check runs, these calls go to the same chooser as torch's samplers
(:mod:`reinforce_check.patching`), and return exactly what numpy or :mod:`random` would return for
the actions the chooser picks. The entry points (:data:`ENTRY_POINTS`):

* ``numpy.random.choice``, the module function (a method of numpy's global ``RandomState``);
* ``numpy.random.RandomState.choice`` and ``numpy.random.Generator.choice``, on generators made
  *during the check* through the names ``numpy.random.RandomState``, ``numpy.random.Generator`` or
  ``numpy.random.default_rng``: for the check's duration those names make instances of Python
  subclasses whose ``choice`` is intercepted. The subclasses draw exactly as numpy's classes do
  from the same seed, and ``isinstance``/``issubclass`` against them answer as for numpy's classes,
  so code that tests ``isinstance(rng, np.random.Generator)`` during a check accepts any generator;
* ``random.choices`` and ``random.Random.choices``, on every ``random.Random`` instance, made before
  the check or during it (``Random.choices`` is a Python method; it is replaced on the class).

A call with probabilities (``p=``, ``weights=``, ``cum_weights=``) hands them to the chooser as a
float64 tensor; numpy's carry no gradient (the check then takes its verdict from central
differences of the exact J), and neither do :mod:`random`'s, unless the weights are a torch tensor
(or a sequence of them) that carries gradient: that gradient is kept. A call without probabilities
is a uniform categorical draw, and is enumerated like any other. ``size=`` (an int or a tuple),
``k=``, ``replace=False`` (drawn one by one without replacement, as numpy's own algorithm does in
distribution), elements of ``a`` or of the population, numpy's ``axis=`` are all honoured; numpy and
:mod:`random` validate the arguments themselves, on a private generator, so invalid ones raise what
they would raise, and no generator the episode can see moves.

What cannot be reached: numpy's generator classes are compiled, so ``choice`` cannot be replaced on
them. A ``Generator`` or ``RandomState`` made *before* the check, or made through a name imported
before it (``from numpy.random import default_rng``), keeps numpy's own ``choice``; so does
``numpy.random.choice`` or ``random.choices`` imported by name before the check. Their draws are
randomness outside the samplers. From numpy's or Python's global generator they are refused as
such (:class:`~reinforce_check.UninterceptedRandomnessError`). From a private generator they show
up as an episode with no sampler call (:class:`~reinforce_check.NoSamplerCallError`, whose message
names the generators and imported names it finds among what the episode refers to,
:func:`unreachable_samplers`, with the fix: make the generator inside the episode through
``np.random.default_rng``, call ``np.random.choice``, or sample with torch), or, when the episode
also samples with torch, as replays that differ (:class:`~reinforce_check.NondeterministicEpisodeError`)
if the generator advances from run to run.

Draws from other functions (``integers``, ``randint``, ``permutation``, ``shuffle``,
``random.random``, ``random.choice``) are not categorical choices with given probabilities; they
stay randomness outside the samplers.
"""

from __future__ import annotations

import dis
import functools
import inspect
import itertools
import operator
import random
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.random._generator as _numpy_generator
import numpy.random.mtrand as _numpy_mtrand
import torch

from .patching import Chooser, choose, route_draw

__all__ = ["ENTRY_POINTS", "Generator", "RandomState", "replacement", "targets", "unreachable_samplers"]

ENTRY_POINTS = [
    "numpy.random.choice",
    "numpy.random.RandomState.choice",
    "numpy.random.Generator.choice",
    "random.choices",
    "random.Random.choices",
]
"""The names of the numpy and :mod:`random` samplers a check intercepts, as reports name them."""

# numpy's own classes and functions, from the modules that define them (a check replaces the names
# in numpy.random only), and Random.choices as the class defines it.
_NumpyRandomState = _numpy_mtrand.RandomState
_NumpyGenerator = _numpy_generator.Generator
_numpy_default_rng = _numpy_generator.default_rng
_python_choices = vars(random.Random)["choices"]

# Private generators on which numpy and random validate a call's arguments: their draws move no
# generator the episode can see.
_VALIDATE_LEGACY = _NumpyRandomState(0)
_VALIDATE_GENERATOR = _NumpyGenerator(np.random.PCG64(0))
_VALIDATE_PYTHON = random.Random(0)

# The index dtypes numpy's choice returns: RandomState's is C long when it draws from p, numpy's
# default integer otherwise (they differ on Windows); Generator's is int64.
_LEGACY_INDEX_WITH_P = np.dtype("l")
_LEGACY_INDEX = np.dtype(int)
_GENERATOR_INDEX = np.dtype(np.int64)


def targets() -> list[tuple[Any, str]]:
    """``(owner, attribute)`` of every name a check replaces for these samplers.

    >>> (random.Random, "choices") in targets()
    True
    """
    return [
        (np.random, "choice"),
        (np.random, "RandomState"),
        (np.random, "Generator"),
        (np.random, "default_rng"),
        (random, "choices"),
        (random.Random, "choices"),
    ]


def replacement(owner: Any, name: str, installed: Any) -> Any:
    """What replaces ``owner.name`` (one of :func:`targets`) during a check, given what it holds.

    The functions call ``installed`` for draws that sample for real (no check running, or a scoped
    check's draw outside marked code), so a wrapper installed before the check keeps working.

    >>> replacement(np.random, "RandomState", np.random.RandomState) is RandomState
    True
    """
    if owner is np.random:
        if name == "choice":
            return _module_choice(installed)
        if name == "default_rng":
            return _default_rng(installed)
        return RandomState if name == "RandomState" else Generator
    if owner is random:
        return _module_choices(installed)
    return _method_choices(installed)


# --- numpy -----------------------------------------------------------------------------------------


class _StandsFor(type):
    """Metaclass of the intercepted generator classes: ``isinstance`` and ``issubclass`` against
    them answer as against numpy's class (their ``_stands_for``), since they stand in for it under
    numpy's name during a check, and generators made before the check are instances of numpy's
    class only. A class derived from them (defined during a check) answers for itself."""

    def __instancecheck__(cls, instance: Any) -> bool:
        stands_for = vars(cls).get("_stands_for")
        return isinstance(instance, stands_for) if stands_for is not None else type.__instancecheck__(cls, instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        stands_for = vars(cls).get("_stands_for")
        return issubclass(subclass, stands_for) if stands_for is not None else type.__subclasscheck__(cls, subclass)


class RandomState(_NumpyRandomState, metaclass=_StandsFor):  # type: ignore[misc]
    """numpy's ``RandomState``, whose :meth:`choice` a running check intercepts.

    ``numpy.random.RandomState`` names this class while a check runs. Outside a check (an instance
    kept after it) it draws exactly as numpy's class does.

    >>> p = [0.1, 0.2, 0.3, 0.4]
    >>> bool((RandomState(3).choice(4, size=9, p=p) == np.random.RandomState(3).choice(4, size=9, p=p)).all())
    True
    """

    _stands_for = _NumpyRandomState

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None) -> Any:
        """``RandomState.choice``; within a check the chooser picks the sample."""
        chooser = route_draw(requires_grad=False)
        if chooser is None:
            return _NumpyRandomState.choice(self, a, size, replace, p)
        return _numpy_choice(chooser, "numpy.random.RandomState.choice", a, size, replace, p, legacy=True)


class Generator(_NumpyGenerator, metaclass=_StandsFor):  # type: ignore[misc]
    """numpy's ``Generator``, whose :meth:`choice` a running check intercepts.

    ``numpy.random.Generator`` names this class while a check runs, and ``numpy.random.default_rng``
    makes its instances. Outside a check it draws exactly as numpy's class does.

    >>> p = [0.1, 0.2, 0.3, 0.4]
    >>> mine, numpys = Generator(np.random.PCG64(3)), np.random.Generator(np.random.PCG64(3))
    >>> bool((mine.choice(4, size=9, p=p) == numpys.choice(4, size=9, p=p)).all()), isinstance(numpys, Generator)
    (True, True)
    """

    _stands_for = _NumpyGenerator

    def choice(
        self, a: Any, size: Any = None, replace: bool = True, p: Any = None, axis: int = 0, shuffle: bool = True
    ) -> Any:
        """``Generator.choice``; within a check the chooser picks the sample.

        ``shuffle=False`` leaves the order of a sample drawn without replacement and without ``p`` to
        numpy's algorithm; the check gives every order the same probability (right for code that
        uses the sample as a set)."""
        chooser = route_draw(requires_grad=False)
        if chooser is None:
            return _NumpyGenerator.choice(self, a, size, replace, p, axis, shuffle)
        return _numpy_choice(chooser, "numpy.random.Generator.choice", a, size, replace, p, axis=axis)


def _default_rng(installed: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(installed)
    def default_rng(seed: Any = None) -> Any:
        made = installed(seed)
        if made is seed or type(made) is not _NumpyGenerator:
            return made  # a generator passed in is returned unaltered, as numpy does
        # The same bit generator, so the same draws as numpy's; only choice() differs.
        return Generator(made.bit_generator)

    return default_rng


def _module_choice(installed: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(installed)
    def choice(a: Any, size: Any = None, replace: bool = True, p: Any = None) -> Any:
        chooser = route_draw(requires_grad=False)
        if chooser is None:
            return installed(a, size, replace, p)
        return _numpy_choice(chooser, "numpy.random.choice", a, size, replace, p, legacy=True)

    return choice


def _numpy_choice(
    chooser: Chooser,
    site: str,
    a: Any,
    size: Any,
    replace: bool,
    p: Any,
    *,
    legacy: bool = False,
    axis: int = 0,
) -> Any:
    """What ``choice`` returns when the chooser picks the sample (numpy's code after its draw)."""
    validate = _VALIDATE_LEGACY.choice if legacy else functools.partial(_VALIDATE_GENERATOR.choice, axis=axis)
    # numpy checks p first, then a, size and replace: validate in that order. Sampling without
    # replacement with p could loop for long on tiny probabilities, so neither run does it.
    if p is not None:
        validate(a, None, True, p)
    validate(a, size, replace, None)
    population = np.asarray(a)
    count = operator.index(population.item()) if population.ndim == 0 else population.shape[axis]
    is_scalar = size is None
    shape: Any = () if is_scalar else size
    draws = int(np.prod(shape, dtype=np.intp))
    probabilities = np.asarray(p, dtype=np.float64) if p is not None else None
    if not replace and probabilities is not None and np.count_nonzero(probabilities > 0) < draws:
        raise ValueError("Fewer non-zero entries in p than size")
    weights = (
        torch.ones(1, count, dtype=torch.float64)
        if probabilities is None
        else torch.tensor(probabilities, dtype=torch.float64).reshape(1, count)
    )
    dtype = _GENERATOR_INDEX if not legacy else _LEGACY_INDEX if p is None else _LEGACY_INDEX_WITH_P
    index = np.asarray(_draw(chooser, weights, draws, bool(replace), site), dtype=dtype)
    indices: Any = index.reshape(shape)
    if is_scalar:
        indices = indices.item(0)
    if population.ndim == 0:
        return indices
    if not is_scalar and indices.ndim == 0 and (legacy or population.ndim == 1):
        # size=() asks for a 0-d array, where population[i] is a scalar: numpy builds it so.
        result = np.empty((), dtype=population.dtype)
        result[()] = population[indices]
        return result
    if legacy:
        return population[indices]
    return population.take(np.asarray(indices, dtype=np.intp), axis=axis)


# --- Python's random -------------------------------------------------------------------------------


def _module_choices(installed: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(installed)
    def choices(population: Sequence[Any], weights: Any = None, *, cum_weights: Any = None, k: int = 1) -> list[Any]:
        chooser = route_draw(requires_grad=_requires_grad(weights, cum_weights))
        if chooser is None:
            return installed(population, weights, cum_weights=cum_weights, k=k)  # type: ignore[no-any-return]
        return _python_choices_drawn(chooser, "random.choices", population, weights, cum_weights, k)

    return choices


def _method_choices(installed: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(installed)
    def choices(
        self: random.Random, population: Sequence[Any], weights: Any = None, *, cum_weights: Any = None, k: int = 1
    ) -> list[Any]:
        chooser = route_draw(requires_grad=_requires_grad(weights, cum_weights))
        if chooser is None:
            return installed(self, population, weights, cum_weights=cum_weights, k=k)  # type: ignore[no-any-return]
        return _python_choices_drawn(chooser, "random.Random.choices", population, weights, cum_weights, k)

    return choices


def _requires_grad(*values: Any) -> bool:
    """Whether weights given as torch tensors carry gradient."""
    for value in values:
        row = _tensor_weights(value)
        if row is not None and row.requires_grad:
            return True
    return False


def _tensor_weights(values: Any) -> torch.Tensor | None:
    """``values`` as one float64 row when they are a torch tensor or a sequence of tensors (their
    gradient kept), else None."""
    if isinstance(values, torch.Tensor):
        return values.reshape(1, -1).to(torch.float64)
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([v.reshape(()) for v in values]).reshape(1, -1).to(torch.float64)
    return None


def _python_choices_drawn(
    chooser: Chooser, site: str, population: Sequence[Any], weights: Any, cum_weights: Any, k: int
) -> list[Any]:
    """What ``random.choices`` returns when the chooser picks the sample."""
    if isinstance(weights, Iterator):
        weights = list(weights)  # read twice below; random.choices reads it once
    with torch.no_grad():
        _python_choices(_VALIDATE_PYTHON, population, weights, cum_weights=cum_weights, k=k)
    count = len(population)
    if k <= 0:
        return []
    if weights is None and cum_weights is None:
        row = torch.ones(1, count, dtype=torch.float64)
    else:
        given = weights if cum_weights is None else cum_weights
        row = _tensor_weights(given)
        if row is None:
            # As random.choices does: cumulative weights in Python's arithmetic, then floats.
            cumulative = list(itertools.accumulate(given)) if cum_weights is None else list(given)
            row = torch.tensor([float(c) for c in cumulative], dtype=torch.float64).reshape(1, count)
            row = torch.diff(row, prepend=torch.zeros(1, 1, dtype=torch.float64))
        elif cum_weights is not None:
            row = torch.diff(row, prepend=torch.zeros(1, 1, dtype=torch.float64))
    return [population[i] for i in _draw(chooser, row, k, True, site)]


# --- shared ----------------------------------------------------------------------------------------


def _draw(chooser: Chooser, weights: torch.Tensor, draws: int, replace: bool, site: str) -> list[int]:
    """The chooser's ``draws`` actions from the one row ``weights``, in order.

    Draws with replacement are independent: they reach the chooser as ``draws`` rows of one action
    each, as torch's batched calls do, so that in batched mode ``size=batch_size`` gives one draw per
    episode. Draws without replacement depend on each other: one row, ``draws`` actions."""
    if draws == 0:
        return []
    if replace:
        chosen = choose(chooser, weights.expand(draws, -1), 1, True, site)
    else:
        chosen = choose(chooser, weights, draws, False, site)
    actions: list[int] = chosen.reshape(-1).tolist()
    return actions


def unreachable_samplers(episode: Callable[..., Any]) -> list[str]:
    """What ``episode`` refers to that draws numpy or :mod:`random` samples a check cannot intercept.

    Looks at the names the episode's code uses (its globals, closure and defaults, and, for a bound
    method or a ``functools.partial``, the object and arguments it holds), one attribute deep:
    numpy generators made before the check, and numpy's or random's samplers imported by name.
    Each finding is a sentence naming the fix, for the message of the error that stopped the check.

    >>> rng = np.random.default_rng(0)
    >>> unreachable_samplers(lambda: rng.choice(3, p=[0.2, 0.3, 0.5]))[0].split(":")[0]
    'rng, a numpy Generator made before the check'
    """
    found: list[str] = []
    for name, value in _referenced(episode):
        described = _describe(name, value)
        if described is None and _plain_object(value):
            for attribute, held in list(vars(value).items())[:64]:
                described = _describe(f"{name}.{attribute}", held)
                if described is not None:
                    break
        if described is not None and described not in found:
            found.append(described)
    return found


def _referenced(function: Any, depth: int = 2) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` of what a callable refers to; functions it refers to are followed
    ``depth - 1`` levels further."""
    if isinstance(function, functools.partial):
        yield from _referenced(function.func, depth)
        for index, value in enumerate(function.args):
            yield f"argument {index}", value
        yield from function.keywords.items()
        return
    if isinstance(function, types.MethodType):
        yield "self", function.__self__
        function = function.__func__
    if not isinstance(function, types.FunctionType):
        return
    code = function.__code__
    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        # Global names only (co_names also holds attribute names).
        names.update(
            str(instruction.argval)
            for instruction in dis.get_instructions(current)
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME")
        )
        stack.extend(const for const in current.co_consts if inspect.iscode(const))
    for name in sorted(names):
        if name in function.__globals__:
            value = function.__globals__[name]
            yield name, value
            if depth > 1 and isinstance(value, types.FunctionType):
                yield from _referenced(value, depth - 1)
    for name, cell in zip(code.co_freevars, function.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not yet filled
            continue
        yield name, value
        if depth > 1 and isinstance(value, types.FunctionType):
            yield from _referenced(value, depth - 1)
    for index, value in enumerate(function.__defaults__ or ()):
        yield f"default {index}", value


def _plain_object(value: Any) -> bool:
    return hasattr(value, "__dict__") and not isinstance(
        value, (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial)
    )


def _describe(name: str, value: Any) -> str | None:
    if type(value) in (_NumpyGenerator, _NumpyRandomState) and value is not _numpy_mtrand._rand:
        kind = "Generator" if type(value) is _NumpyGenerator else "RandomState"
        return (
            f"{name}, a numpy {kind} made before the check: its choice() cannot be intercepted (numpy's "
            "generator classes are compiled) and it advances from run to run. Make the generator inside the "
            "episode through the module's name, np.random.default_rng(seed) or np.random.RandomState(seed), "
            "or call np.random.choice, or sample with torch"
        )
    if value is _numpy_default_rng or value is _NumpyGenerator or value is _NumpyRandomState:
        return (
            f"{name}, numpy.random.{value.__name__} imported by name before the check: the generators it makes "
            f"keep numpy's own choice(). Call np.random.{value.__name__}(...) through the module instead"
        )
    if isinstance(value, types.MethodType):
        if value.__self__ is _numpy_mtrand._rand and value.__func__ is _NumpyRandomState.choice:
            return (
                f"{name}, numpy.random.choice imported by name before the check, which draws for real. "
                "Call np.random.choice(...) through the module instead"
            )
        if value.__func__ is _python_choices and value.__self__ is getattr(random, "_inst", None):
            return (
                f"{name}, random.choices imported by name before the check, which draws for real. "
                "Call random.choices(...) through the module instead"
            )
    return None
