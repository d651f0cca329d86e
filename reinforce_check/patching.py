"""Interception of the categorical samplers: torch's, numpy's and Python's.

While :func:`intercept_samplers` is active, every categorical draw a policy makes is routed to
a *chooser* (see :mod:`reinforce_check.chooser`) that picks actions deterministically and records
their probabilities, with gradient where the policy's probabilities carry it. The entry points
replaced are (:func:`sampler_entry_points`):

* ``torch.multinomial`` and ``Tensor.multinomial`` (what ``Categorical.sample`` calls),
* ``torch.bernoulli`` and ``Tensor.bernoulli``,
* the ``sample`` method installed on :class:`torch.distributions.Categorical`,
  :class:`~torch.distributions.OneHotCategorical` and :class:`~torch.distributions.Bernoulli`
  *at the time the check starts*. A code base that replaced ``Categorical.sample`` with its own
  wrapper keeps its wrapper: ours calls it, and the primitive it reaches is intercepted;
* ``numpy.random.choice``; ``numpy.random.RandomState.choice`` and
  ``numpy.random.Generator.choice`` on generators made during the check through
  ``numpy.random.RandomState``, ``numpy.random.Generator`` or ``numpy.random.default_rng``;
  ``random.choices`` and ``random.Random.choices``. Their reach and its limits (numpy's generators
  made before the check cannot be reached) are in :mod:`reinforce_check.numpy_samplers`.

Everything is restored when the block exits, exceptions included. Patching is process-global,
so checks must not run concurrently in several threads; a nested check is refused.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import distributions

from . import precision, scope
from .scope import OutsideDraws

__all__ = ["Chooser", "intercept_samplers", "sampler_entry_points", "samplers_installed"]

_MISSING = object()
_LOCK = threading.Lock()


class Chooser(Protocol):
    """What the interception layer hands each categorical draw to."""

    def choose(self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str) -> torch.Tensor:
        """Pick ``num_samples`` actions for every row of ``weights`` (shape ``(rows, K)``).

        ``weights`` are unnormalized and non-negative; they carry gradient when the policy's
        probabilities do (numpy's never do). Returns a ``(rows, num_samples)`` long tensor.
        """
        ...


class _State(threading.local):
    def __init__(self) -> None:
        self.chooser: Chooser | None = None
        # Distributions whose ``sample`` is running, innermost last: names the site in reports and
        # lets ``torch.bernoulli`` recover probabilities that Bernoulli.sample detached.
        self.distributions: list[tuple[distributions.Distribution, str]] = []
        # Scoped mode: only draws inside @enumerate_actions code go to the chooser; the others
        # sample for real (from the generator state the enumeration resets before every run) and
        # are counted here.
        self.outside: OutsideDraws | None = None
        # Whether this thread's check has the replacements installed (see samplers_installed).
        self.installed = False


_STATE = _State()


def _outside_scope() -> bool:
    """Whether a draw made now samples for real because the check is scoped and it is unmarked."""
    return _STATE.outside is not None and not scope.inside()


def route_draw(*, requires_grad: bool) -> Chooser | None:
    """The chooser a draw made now goes to, or None when it samples for real: no check is running
    (or another thread's is), or the check is scoped and the draw is outside marked code, which is
    counted (``requires_grad``: whether the draw's probabilities carry gradient)."""
    chooser = _STATE.chooser
    if chooser is None:
        return None
    if _outside_scope():
        assert _STATE.outside is not None
        _STATE.outside.count(requires_grad=requires_grad)
        return None
    return chooser


def _passthrough(probs: torch.Tensor | None = None) -> bool:
    """Whether a draw made now should sample for real instead of going to the chooser."""
    return route_draw(requires_grad=probs is not None and probs.requires_grad) is None


def sampler_entry_points() -> list[str]:
    """Names of the sampler entry points that a check intercepts.

    >>> "torch.multinomial" in sampler_entry_points(), "numpy.random.choice" in sampler_entry_points()
    (True, True)
    """
    from . import numpy_samplers

    return [f"{_owner_name(owner)}.{name}" for owner, name in _torch_targets()] + numpy_samplers.ENTRY_POINTS


def describe_entry_points() -> str:
    """The intercepted samplers in words, for messages that tell how to make a draw checkable.

    >>> describe_entry_points().startswith("torch.multinomial, Tensor.multinomial")
    True
    """
    return (
        "torch.multinomial, Tensor.multinomial, torch.bernoulli, Tensor.bernoulli, the sample() of "
        "Categorical, OneHotCategorical and Bernoulli, numpy.random.choice, the choice() of numpy generators "
        "made during the check through np.random.default_rng, np.random.Generator or np.random.RandomState, "
        "and random.choices (the module's, or any random.Random's); numpy's and random's are intercepted only "
        "when called through those names (a function or generator class imported by name before the check "
        "draws for real)"
    )


def no_sampler_call_message(episode: Callable[..., Any]) -> str:
    """The message of :class:`~reinforce_check.NoSamplerCallError` for ``episode``: what is
    intercepted, and what the episode refers to that draws numpy samples the check cannot reach."""
    from . import numpy_samplers

    found = numpy_samplers.unreachable_samplers(episode)
    return (
        "the episode made no call to an intercepted sampler, so there is nothing to enumerate. Sample actions "
        f"with {describe_entry_points()}; a policy that picks actions with argmax or a Gumbel-max trick cannot "
        "be checked."
        + "".join(f" The episode refers to {finding}." for finding in found)
    )


def _owner_name(owner: Any) -> str:
    return "torch" if owner is torch else owner.__name__


def _targets() -> list[tuple[Any, str]]:
    """Every ``(owner, attribute)`` a check replaces."""
    from . import numpy_samplers  # imports this module: imported when first needed

    return _torch_targets() + numpy_samplers.targets()


def _torch_targets() -> list[tuple[Any, str]]:
    return [
        (torch, "multinomial"),
        (torch.Tensor, "multinomial"),
        (torch, "bernoulli"),
        (torch.Tensor, "bernoulli"),
        (distributions.Categorical, "sample"),
        (distributions.OneHotCategorical, "sample"),
        (distributions.Bernoulli, "sample"),
    ]


def _site(default: str) -> str:
    return _STATE.distributions[-1][1] if _STATE.distributions else default


def _multinomial(original: Callable[..., torch.Tensor], site: str) -> Callable[..., torch.Tensor]:
    @functools.wraps(original)
    def multinomial(
        input: torch.Tensor,
        num_samples: int,
        replacement: bool = False,
        *,
        generator: torch.Generator | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        chooser = _STATE.chooser
        if chooser is None or _passthrough(input):
            if out is not None:
                return original(input, num_samples, replacement, generator=generator, out=out)
            return original(input, num_samples, replacement, generator=generator)
        weights = input if input.dim() == 2 else input.reshape(1, -1)
        chosen = choose(chooser, weights, int(num_samples), bool(replacement), _site(site))
        result = chosen if input.dim() == 2 else chosen.reshape(-1)
        if out is not None:
            return out.copy_(result)
        return result

    return multinomial


def _tensor_multinomial(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def multinomial(
        self: torch.Tensor,
        num_samples: int,
        replacement: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return function(self, num_samples, replacement, generator=generator)

    return multinomial


def _bernoulli(original: Callable[..., torch.Tensor], site: str) -> Callable[..., torch.Tensor]:
    @functools.wraps(original)
    def bernoulli(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        chooser = _STATE.chooser
        if chooser is None or _passthrough(input):
            return original(input, *args, **kwargs)
        kwargs.pop("generator", None)
        out = kwargs.pop("out", None)
        p_arg = args[0] if args else kwargs.pop("p", None)
        probs = input if p_arg is None else torch.full_like(input, float(p_arg))
        owner = _STATE.distributions[-1][0] if _STATE.distributions else None
        if isinstance(owner, distributions.Bernoulli) and input.shape[input.dim() - owner.probs.dim() :] == owner.probs.shape:
            # Bernoulli.sample draws under no_grad; the probability we record must carry gradient
            # (torch computes the lazy ``probs`` with gradient enabled). Its sample_shape comes
            # first, so draw it as several samples of each batch row, as Categorical does.
            samples = input.numel() // max(owner.probs.numel(), 1)
            with torch.enable_grad():
                flat = owner.probs.reshape(-1, 1)
                weights = torch.cat([1 - flat, flat], dim=1)
                chosen = choose(chooser, weights, samples, True, _site(site))
            result = chosen.T.reshape(input.shape).to(input.dtype)
        else:
            flat = probs.reshape(-1, 1)
            weights = torch.cat([1 - flat, flat], dim=1)
            chosen = choose(chooser, weights, 1, True, _site(site))
            result = chosen.reshape(input.shape).to(input.dtype)
        if out is not None:
            return out.copy_(result)
        return result

    return bernoulli


def choose(chooser: Chooser, weights: torch.Tensor, num_samples: int, replacement: bool, site: str) -> torch.Tensor:
    """The chooser's actions for ``weights``, on the device of ``weights``, as torch's samplers
    return them. The chooser's bookkeeping runs on the CPU: a policy on another device (a GPU)
    hands it a copy, which autograd differentiates back to the device. Weights made under
    :func:`torch.inference_mode` reach it as an ordinary copy (inference tensors keep no version
    counter, which the chooser reads to refuse in-place changes); they carry no gradient either way."""
    if weights.is_inference():
        with torch.inference_mode(False):
            weights = weights.clone()
    if precision.promoting():
        # The chooser is the check's own code: it runs as written, not promoted with the episode.
        with precision.unpromoted():
            return _choose_on_cpu(chooser, weights, num_samples, replacement, site)
    return _choose_on_cpu(chooser, weights, num_samples, replacement, site)


def _choose_on_cpu(
    chooser: Chooser, weights: torch.Tensor, num_samples: int, replacement: bool, site: str
) -> torch.Tensor:
    if weights.device.type == "cpu":
        return chooser.choose(weights, num_samples, replacement, site)
    return chooser.choose(weights.cpu(), num_samples, replacement, site).to(weights.device)


def _tensor_bernoulli(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def bernoulli(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return function(self, *args, **kwargs)

    return bernoulli


def _distribution_sample(installed: Callable[..., Any], site: str) -> Callable[..., Any]:
    @functools.wraps(installed)
    def sample(self: distributions.Distribution, *args: Any, **kwargs: Any) -> Any:
        if _STATE.chooser is None or _outside_scope():
            if _STATE.outside is not None and isinstance(self, distributions.Bernoulli) and self.probs.requires_grad:
                # torch draws Bernoulli samples under no_grad, where the primitive cannot see this.
                _STATE.outside.with_grad += 1
            return installed(self, *args, **kwargs)
        _STATE.distributions.append((self, site))
        try:
            return installed(self, *args, **kwargs)
        finally:
            _STATE.distributions.pop()

    return sample


_CACHE: dict[tuple[Any, str, Any], Callable[..., Any]] = {}


def _replacement(owner: Any, name: str) -> Callable[..., Any]:
    installed = getattr(owner, name)
    key = (owner, name, installed)
    # Built once per installed function: the same replacement serves every check and every block.
    if key not in _CACHE:
        site = f"{_owner_name(owner)}.{name}"
        if (owner, name) not in _torch_targets():
            from . import numpy_samplers

            _CACHE[key] = numpy_samplers.replacement(owner, name, installed)
        elif name == "sample":
            _CACHE[key] = _distribution_sample(installed, site)
        elif owner is torch:
            _CACHE[key] = (_multinomial if name == "multinomial" else _bernoulli)(installed, site)
        elif name == "multinomial":
            _CACHE[key] = _tensor_multinomial(_multinomial(installed, site))
        else:
            _CACHE[key] = _tensor_bernoulli(_bernoulli(installed, site))
    return _CACHE[key]


def _replacements() -> list[tuple[tuple[Any, str], Callable[..., Any]]]:
    return [((owner, name), _replacement(owner, name)) for owner, name in _targets()]


@contextlib.contextmanager
def intercept_samplers(chooser: Chooser, *, outside: OutsideDraws | None = None) -> Iterator[None]:
    """Route every categorical draw to ``chooser`` for the duration of the block.

    With ``outside`` (scoped mode) only draws made inside :func:`~reinforce_check.enumerate_actions`
    code go to the chooser; the others sample for real and are counted in ``outside``. Within
    :func:`samplers_installed` the block only routes; otherwise it installs the replacements for
    its own duration.

    >>> class First:
    ...     def choose(self, weights, num_samples, replacement, site):
    ...         return weights.argmax(-1, keepdim=True).expand(-1, num_samples)
    >>> with intercept_samplers(First()):
    ...     torch.distributions.Categorical(probs=torch.tensor([0.2, 0.8])).sample()
    tensor(1)
    """
    if _STATE.chooser is not None:
        raise _nested_check_error()
    with samplers_installed():
        _STATE.chooser = chooser
        _STATE.distributions = []
        _STATE.outside = outside
        scope.activate(scoped=outside is not None)
        try:
            yield
        finally:
            _STATE.chooser = None
            _STATE.distributions = []
            _STATE.outside = None
            scope.deactivate()


@contextlib.contextmanager
def samplers_installed() -> Iterator[None]:
    """Keep the replacements installed for the duration of the block, routing nothing by themselves:
    a draw samples for real unless :func:`intercept_samplers` routes it. A check enters this once, so
    that its many episode runs do not each replace attributes of ``torch.Tensor`` and the
    distributions (which makes Python drop what it had cached about those types). Within the block
    of the same thread it does nothing more; another thread's check is refused.

    >>> original = torch.multinomial
    >>> with samplers_installed():
    ...     torch.multinomial is original
    False
    >>> torch.multinomial is original
    True
    """
    if _STATE.installed:
        yield
        return
    if not _LOCK.acquire(blocking=False):
        raise _nested_check_error()
    saved: list[tuple[Any, str, Any]] = []
    try:
        saved = save_attributes(_targets())
        for (owner, name), function in _replacements():
            setattr(owner, name, function)
        _STATE.installed = True
        yield
    finally:
        _STATE.installed = False
        restore_attributes(saved)
        _LOCK.release()


def _nested_check_error() -> Exception:
    from .errors import CheckUsageError

    return CheckUsageError(
        "a reinforce_check check is already running: checks cannot be nested or run in "
        "parallel threads, because sampler interception is process-global. Run them one after another."
    )


def save_attributes(targets: Iterable[tuple[Any, str]]) -> list[tuple[Any, str, Any]]:
    """What each ``(owner, name)`` holds itself (not inherited), for :func:`restore_attributes`.

    >>> class Owner:
    ...     pass
    >>> saved = save_attributes([(Owner, "draw")])
    >>> Owner.draw = len
    >>> restore_attributes(saved); hasattr(Owner, "draw")
    False
    """
    return [(owner, name, vars(owner).get(name, _MISSING)) for owner, name in targets]


def restore_attributes(saved: list[tuple[Any, str, Any]]) -> None:
    """Put back what :func:`save_attributes` saw, deleting attributes the owner did not hold itself."""
    for owner, name, previous in reversed(saved):
        if previous is _MISSING:
            if name in vars(owner):
                delattr(owner, name)
        else:
            setattr(owner, name, previous)
