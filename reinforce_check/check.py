"""``check_reinforce``: does a REINFORCE implementation compute the gradient it claims to?

The check is a sequence of named stages: validate the options and parameters; enumerate (the
episode runs under intercepted samplers, :mod:`~reinforce_check.patching` and
:mod:`~reinforce_check.chooser`, once per terminating action sequence,
:mod:`~reinforce_check.enumeration`) while summing the exact quantities
(:mod:`~reinforce_check.exact`); compare; attribute a bias to sequences; verify with finite
differences; report (:mod:`~reinforce_check.report`). The mode, sequential or batched, is chosen
once, as the runner the stages are handed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Union

import torch

from .enumeration import BatchedRunner, Runner, SequentialRunner, enumerate_with
from .errors import InvalidOptionError, ParameterError
from .exact import (
    ExactGradients,
    bias_contributions,
    exact_gradients,
    NumericReference,
    finite_differences as finite_difference_checks,
    numeric_reference,
    sequence_statistics,
)
from .patching import samplers_installed
from .precision import Precision, Tolerances, choose_precision
from .report import (
    AutogradDisagreed,
    CheckReport,
    DirectionalCheck,
    DrawsWithoutGradient,
    Note,
    ParameterReport,
    RecordedGraph,
    ReinforceCheckError,
    ScopedDraws,
    SequenceContribution,
    format_mismatch,
    format_note,
)

__all__ = ["check_reinforce"]

Params = Union[Mapping[str, torch.Tensor], Iterable[torch.Tensor], torch.nn.Module, torch.Tensor]
FiniteDifferences = Literal["tensor", "joint", "coordinate", "none"]
_FD_MODES = ("tensor", "joint", "coordinate", "none")


def _named_parameters(params: Params) -> list[tuple[str, torch.Tensor]]:
    items: list[tuple[str, torch.Tensor]]
    if isinstance(params, torch.nn.Module):
        items = list(params.named_parameters())
    elif isinstance(params, torch.Tensor):
        items = [("param", params)]
    elif isinstance(params, Mapping):
        items = [(str(k), v) for k, v in params.items()]
    else:
        try:
            items = [(f"param{i}", t) for i, t in enumerate(params)]
        except TypeError:
            raise ParameterError(
                f"params is a {type(params).__name__}; pass a mapping name -> tensor (for example "
                "dict(policy.named_parameters())), an iterable of tensors, or an nn.Module."
            ) from None
    if not items:
        raise ParameterError("params is empty: pass the parameters whose gradient the check should verify.")
    seen: dict[int, str] = {}
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise ParameterError(f"parameter {name!r} is a {type(tensor).__name__}, not a tensor.")
        if id(tensor) in seen:
            raise ParameterError(f"parameters {seen[id(tensor)]!r} and {name!r} are the same tensor; list it once.")
        seen[id(tensor)] = name
        if not tensor.requires_grad:
            raise ParameterError(
                f"parameter {name!r} does not require grad, so its gradient cannot be checked. "
                "Call tensor.requires_grad_() or leave it out of params."
            )
        if not tensor.is_leaf:
            raise ParameterError(
                f"parameter {name!r} is not a leaf tensor (it was computed from other tensors); pass the leaf "
                "tensors it is computed from, which the check can perturb for finite differences."
            )
        if not tensor.dtype.is_floating_point:
            raise ParameterError(
                f"parameter {name!r} is {tensor.dtype}; the check handles real floating-point parameters "
                "(float64, float32, float16, bfloat16)."
            )
    return items


def _module_buffers(params: Params) -> list[torch.Tensor]:
    """The buffers of a module passed as ``params``: a promoted check runs them on copies."""
    return list(params.buffers()) if isinstance(params, torch.nn.Module) else []


def _compare(name: str, target: torch.Tensor, estimate: torch.Tensor, rtol: float, atol: float) -> ParameterReport:
    difference = (estimate - target).abs()
    allowed = atol + rtol * target.abs()
    mismatched = difference > allowed
    shape = tuple(target.shape)
    if bool(mismatched.any()):
        # As torch.testing does: the worst elements among those that fail, relative errors of
        # elements whose exact value is zero being infinite.
        relative = torch.where(target != 0, difference / target.abs(), torch.full_like(difference, math.inf))
        relative = torch.where(mismatched, relative, torch.zeros_like(relative))
        absolute = torch.where(mismatched, difference, torch.zeros_like(difference))
    else:
        # Relative error where it means something: elements whose exact gradient exceeds atol.
        relative = torch.where(target.abs() > atol, difference / target.abs(), torch.zeros_like(difference))
        absolute = difference

    def worst(values: torch.Tensor) -> tuple[tuple[int, ...], float]:
        if values.numel() == 0:
            return tuple(0 for _ in shape), 0.0
        flat = int(values.reshape(-1).argmax())
        index: tuple[int, ...] = ()
        for size in reversed(shape):
            flat, position = divmod(flat, size)
            index = (position, *index)
        return index, float(values[index] if shape else values)

    abs_index, abs_error = worst(absolute)
    rel_index, rel_error = worst(relative)
    return ParameterReport(
        name=name,
        shape=shape,
        target=target,
        estimate=estimate,
        mismatches=int(mismatched.sum()),
        max_abs_error=abs_error,
        max_rel_error=rel_error,
        worst_abs_index=abs_index,
        worst_rel_index=rel_index,
    )


def _compare_numeric(
    names: list[str], reference: NumericReference, exact: ExactGradients, rtol: float, atol: float
) -> list[ParameterReport]:
    """E[grad loss] against -grad J by central differences: elementwise where every coordinate was
    taken, else along the reference's random unit direction."""
    reports = []
    for index, name in enumerate(names):
        estimate = exact.estimate[index]
        gradient, direction, numeric = reference.gradient[index], reference.direction[index], reference.numeric[index]
        if gradient is not None:
            report = _compare(name, gradient, estimate, rtol, atol)
            report.reference = "central differences"
            reports.append(report)
            continue
        assert direction is not None and numeric is not None
        along = float((estimate * direction).sum())
        # The closest reference consistent with what was measured: the estimate, its component
        # along the direction replaced by the numeric derivative.
        target = estimate + (numeric - along) * direction
        difference = abs(numeric - along)
        failed = difference > atol + rtol * abs(numeric)
        relative = difference / abs(numeric) if numeric != 0 else (math.inf if failed else 0.0)
        worst = _compare(name, target, estimate, 0.0, 0.0)
        reports.append(
            ParameterReport(
                name=name,
                shape=tuple(estimate.shape),
                target=target,
                estimate=estimate,
                mismatches=int(failed),
                max_abs_error=difference,
                max_rel_error=relative,
                worst_abs_index=worst.worst_abs_index,
                worst_rel_index=worst.worst_abs_index,
                reference="central differences along a random direction",
            )
        )
    return reports


def check_reinforce(
    episode: Callable[..., Any],
    params: Params,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_sequences: int = 10_000,
    raise_exception: bool = True,
    batched: bool = False,
    finite_differences: FiniteDifferences = "joint",
    fd_step: float = 1e-6,
    fd_rtol: float = 1e-5,
    fd_atol: float = 1e-7,
    variance: bool = False,
    top_sequences: int = 5,
    seed: int = 0,
    promote: bool | None = None,
) -> CheckReport:
    r"""Check that a REINFORCE implementation's expected gradient is the exact gradient.

    The episode is run once for every terminating sequence of actions its samplers can produce. With
    :math:`p(a)` the probability of sequence :math:`a`, the check computes the exact objective
    :math:`J(\theta) = \sum_a p(a)\,\mathrm{objective}(a)` and passes when, for every checked
    parameter,

    .. math:: \sum_a p(a)\, \nabla_\theta \mathrm{loss}(a) = -\nabla_\theta J(\theta)

    elementwise within ``atol + rtol * |grad J|``, and central differences of the exact :math:`J`
    agree with both sides. When some sampler call ran with gradient recording off
    (``torch.no_grad()``, ``torch.inference_mode()``: a PPO-style rollout), autograd's -grad J may
    miss score terms, so central differences of the exact :math:`J` decide instead, within
    ``fd_atol + fd_rtol * |numeric|``: every coordinate of a tensor of at most 16 elements, one
    random unit direction of a larger one. They decide too wherever autograd's -grad J disagrees
    with them (probabilities detached on their way to a sampler, say). ``report.ground_truth`` says
    which decided. Code marked with :func:`~reinforce_check.enumerate_actions` records its
    graph through ``torch.no_grad()`` during a check (not through ``torch.inference_mode()``), so
    marking the function that samples keeps autograd as the ground truth. The check itself runs
    with gradient recording on, whatever its caller's grad mode.

    .. note::
        The check computes in float64: exact sums over thousands of sequences and finite differences
        are only trustworthy in double precision, and the default tolerances assume it. A float32,
        float16 or bfloat16 model needs no edits: by default the check *promotes* it (``promote``),
        running its parameters, the buffers of a module passed as ``params``, and every floating
        tensor the episode creates or casts (``.float()``, ``dtype=torch.float32``, autocast regions)
        in float64, and puts every parameter and buffer back afterwards, bitwise. See
        :mod:`reinforce_check.precision` for the mechanism and its limits.

    Arguments:
        episode: ``episode()`` runs one episode, sampling actions with torch as usual
            (``torch.distributions.Categorical(...).sample()``, ``torch.multinomial``, ...), and returns
            ``(objective, loss)``: two scalar tensors. ``objective`` is the per-episode quantity whose
            expectation is maximized (it may depend on the parameters directly, e.g. a log-likelihood);
            ``loss`` is what the implementation minimizes for that episode. With ``batched=True``,
            ``episode(batch_size)`` runs that many independent episodes and returns per-row tensors of
            shape ``(batch_size,)``; rows that have finished must not branch (give them a distribution with
            one action of nonzero probability), and rows must not interact. A sampler call may draw
            several decisions per episode at once: ``k * batch_size`` probability rows, the episode
            first (row ``b * k + j`` is episode ``b``'s ``j``-th decision of the call).
        params: the parameters to check: a mapping name -> tensor (``dict(model.named_parameters())``),
            an iterable of tensors, or an ``nn.Module``. Leaf real floating-point tensors that require grad.
        rtol: relative tolerance of the elementwise comparison.
        atol: absolute tolerance of the elementwise comparison.
        max_sequences: stop with :class:`~reinforce_check.SequenceBudgetError` past this many sequences:
            as soon as the sequences completed plus the prefixes pending exceed it, or, in sequential
            mode, once Knuth's estimate of the tree's size from the paths walked (the mean product of
            the numbers of feasible actions along them) is at least 10 times it, after 32 runs and one
            second, and the same estimate proved right within a factor 2 on a completed subtree of at
            least 16 sequences. The estimate can be wrong (the walk's paths are not random): a tree
            within budget that it refuses runs with a ``max_sequences`` above the estimate it states.
        raise_exception: raise :class:`~reinforce_check.ReinforceCheckError` on a mismatch (default);
            with ``False`` the report is returned and ``report.ok`` says whether the check passed.
        batched: call ``episode(batch_size)`` and enumerate in as few batched calls as possible.
        finite_differences: ``"joint"`` (default): one random unit direction over all parameters (2
            evaluations of J). ``"tensor"``: one random unit
            direction per parameter tensor always (2 evaluations per tensor); ``"coordinate"``: every
            coordinate; ``"none"``: skip, except for one joint direction when the gradients mismatch
            or some sampler call's probabilities carried no gradient, so that a bias is never
            reported on autograd's word alone. Whatever the mode, the implementation's gradient is
            compared with autograd's exact -grad J element by element; finite differences verify
            that -grad J itself is right. Where they disagree with it (part of J's dependence is
            detached from the graph), or where draws made with gradient recording off leave
            autograd blind, central differences of the exact J become the ground truth, whatever the
            mode (``"none"`` included).
        fd_step: step of the central differences.
        fd_rtol: relative tolerance of the finite-difference comparison.
        fd_atol: absolute tolerance of the finite-difference comparison.
        variance: also compute the exact variance of the single-episode estimator ``grad loss(a)``
            (free in sequential mode; in batched mode it replays each sequence alone).
        top_sequences: how many sequences to list as the largest contributors when a bias is found.
        seed: seed of the private generator that draws finite-difference directions.
        promote: run the episode in float64. ``None`` (default): when a checked parameter is
            float32, float16 or bfloat16. ``True``: always, also for float64 parameters whose code
            casts with ``.float()`` or computes under autocast. ``False``: never; the episode
            computes in its parameters' own dtypes, and each tolerance and ``fd_step`` is raised, if
            finer, to what the least precise of them resolves, from its machine epsilon ``eps``
            (``torch.finfo(dtype).eps``): ``rtol = atol = fd_rtol = fd_atol = sqrt(eps)`` (3.5e-4 in
            float32, 0.088 in bfloat16) and ``fd_step = eps ** (1/3)`` (4.9e-3 in float32). A
            gradient computed in that precision is off by some ``k * eps`` relative, ``k`` growing
            with the computation's depth and the number of sequences summed: ``sqrt(eps)`` accepts
            ``k`` up to ``1 / sqrt(eps)`` (2,900 in float32) and still catches a bias above
            ``sqrt(eps) * (1 + |grad J|)``. Central differences with step ``h`` err by about
            ``eps * |J| / h + h**2 * |J'''| / 6``, least at ``h = eps ** (1/3)``, where both terms
            are of order ``eps ** (2/3)``: ``sqrt(eps)`` leaves a margin of ``eps ** (-1/6)`` (14 in
            float32). Like the float64 defaults, the absolute tolerances assume gradients and
            objectives of order one. The report's tolerances are those used, and a note says so.

    Returns:
        A :class:`~reinforce_check.CheckReport`; ``str(report)`` is a table.

    Raises:
        ReinforceCheckError: the gradients disagree (unless ``raise_exception=False``).
        CheckUsageError: the check cannot be run as asked; the subclass and message say what to change.

    >>> import torch
    >>> logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    >>> def episode():
    ...     dist = torch.distributions.Categorical(logits=logits)
    ...     action = dist.sample()
    ...     reward = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)[action]
    ...     return reward, -dist.log_prob(action) * reward
    >>> check_reinforce(episode, {"logits": logits}).ok
    True
    """
    _validate_options(
        finite_differences=finite_differences,
        tolerances={"rtol": rtol, "atol": atol, "fd_rtol": fd_rtol, "fd_atol": fd_atol},
        fd_step=fd_step,
        top_sequences=top_sequences,
        max_sequences=max_sequences,
        promote=promote,
    )
    named = _named_parameters(params)
    precision = choose_precision([t for _, t in named], _module_buffers(params), promote=promote)
    used = precision.tolerances(Tolerances(rtol, atol, fd_step, fd_rtol, fd_atol))
    # The samplers' replacements stay installed for the whole check; each episode run only routes them.
    with precision.applied(), samplers_installed():
        return _check(
            precision.episode(episode),
            named,
            precision,
            rtol=used.rtol,
            atol=used.atol,
            max_sequences=max_sequences,
            raise_exception=raise_exception,
            batched=batched,
            finite_differences=finite_differences,
            fd_step=used.fd_step,
            fd_rtol=used.fd_rtol,
            fd_atol=used.fd_atol,
            variance=variance,
            top_sequences=top_sequences,
            seed=seed,
        )


def _check(
    episode: Callable[..., Any],
    named: list[tuple[str, torch.Tensor]],
    precision: Precision,
    *,
    rtol: float,
    atol: float,
    max_sequences: int,
    raise_exception: bool,
    batched: bool,
    finite_differences: FiniteDifferences,
    fd_step: float,
    fd_rtol: float,
    fd_atol: float,
    variance: bool,
    top_sequences: int,
    seed: int,
) -> CheckReport:
    """The stages of :func:`check_reinforce`, once its options are valid and its precision chosen:
    ``episode`` is the one to run (promoted when the check promotes)."""
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    start = time.perf_counter()

    runner: Runner = (BatchedRunner if batched else SequentialRunner)(episode, max_sequences=max_sequences)
    # The runs that need gradients have it whatever the caller's grad mode (marked code tells them
    # from the check's own runs under no_grad by it).
    with torch.enable_grad():
        runner, exact = enumerate_with(runner, lambda passes: exact_gradients(passes, tensors, variance=variance))
    # One more run of the first sequence: state kept between runs would change what it returns.
    runner.verify_replay()
    parameters = [_compare(n, t, e, rtol, atol) for n, t, e in zip(names, exact.target, exact.estimate)]
    directional, numeric, disagreed = _autograd_reference(
        runner,
        names,
        tensors,
        exact,
        mode=finite_differences,
        mismatched=not all(p.ok for p in parameters),
        step=fd_step,
        rtol=fd_rtol,
        atol=fd_atol,
        seed=seed,
    )
    if directional is not None:
        ground_truth = "autograd"
        attributed = top_sequences
    else:
        ground_truth = "finite differences"
        reference = numeric_reference(runner, tensors, step=fd_step, seed=seed)
        parameters = _compare_numeric(names, reference, exact, fd_rtol, fd_atol)
        # A sequence's share of the bias needs autograd's gradient of p(a) objective(a): not without it.
        directional, numeric, attributed = [], None, 0
    with torch.enable_grad():
        contributions, variances = _attribute(
            runner, tensors, parameters, exact, top_sequences=attributed, variance=variance
        )
    if variances is not None:
        for p, v in zip(parameters, variances):
            p.variance = v
    if numeric is not None:
        for p, n in zip(parameters, numeric):
            p.numeric = n
    report = _report(
        runner,
        exact,
        parameters,
        directional,
        contributions,
        disagreed=disagreed,
        settings=dict(
            rtol=rtol,
            atol=atol,
            fd_mode=finite_differences,
            fd_rtol=fd_rtol,
            fd_atol=fd_atol,
            batched=batched,
            ground_truth=ground_truth,
            precision=precision.name,
            promoted=precision.promote,
        ),
        seconds=time.perf_counter() - start,
        precision_note=precision.note(Tolerances(rtol, atol, fd_step, fd_rtol, fd_atol)),
    )
    if not report.ok and raise_exception:
        raise ReinforceCheckError(format_mismatch(report), report)
    return report


def _autograd_reference(
    runner: Runner,
    names: list[str],
    tensors: list[torch.Tensor],
    exact: ExactGradients,
    *,
    mode: FiniteDifferences,
    mismatched: bool,
    step: float,
    rtol: float,
    atol: float,
    seed: int,
) -> tuple[list[DirectionalCheck] | None, list[torch.Tensor] | None, int]:
    """Whether autograd's -grad J can be the ground truth, with its finite-difference cross-check.

    Autograd sees J's dependence on the parameters only through the graph. Sampler calls made with
    gradient recording off leave their probabilities out of it: central differences of J decide,
    and none of this is run. Probabilities detached (or computed outside torch) with recording on
    may or may not depend on the parameters, and a tensor detached on its way to the sampler cannot
    be seen at all: the cross-check runs even when ``mode`` is ``"none"`` if some call's
    probabilities carried no gradient, or carried a graph that marked code recorded where gradient
    recording was off (a path it could not record leaves no trace either), or the estimate
    ``mismatched`` autograd's -grad J (a bias is never reported on autograd's word alone), and if
    autograd disagrees with central differences (an objective term computed from detached values
    would do it too), central differences decide.

    Returns:
        The directional checks (``None`` when central differences decide), the numeric gradient of
        the ``"coordinate"`` mode, and how many directions autograd disagreed along.
    """
    found = runner.found
    if found.calls_gradient_off:
        return None, None, 0
    if mode == "none" and (found.calls_without_gradient or found.calls_recorded or mismatched):
        mode = "joint"
    directional, numeric = finite_difference_checks(
        runner, names, tensors, exact, mode=mode, step=step, rtol=rtol, atol=atol, seed=seed
    )
    disagreed = sum(not c.autograd_ok for c in directional)
    if disagreed:
        return None, None, disagreed
    return directional, numeric, 0


def _validate_options(
    *,
    finite_differences: str,
    tolerances: dict[str, float],
    fd_step: float,
    top_sequences: int,
    max_sequences: int,
    promote: bool | None,
) -> None:
    if finite_differences not in _FD_MODES:
        raise InvalidOptionError(f"finite_differences must be one of {_FD_MODES}, not {finite_differences!r}.")
    for label, value in tolerances.items():
        if not (value >= 0 and math.isfinite(value)):
            raise InvalidOptionError(f"{label} must be a finite non-negative number, not {value!r}.")
    if not fd_step > 0:
        raise InvalidOptionError(f"fd_step must be positive, not {fd_step!r}.")
    if not (isinstance(top_sequences, int) and top_sequences >= 0):
        raise InvalidOptionError(f"top_sequences must be a non-negative integer, not {top_sequences!r}.")
    if not (isinstance(max_sequences, int) and max_sequences >= 1):
        raise InvalidOptionError(f"max_sequences must be a positive integer, not {max_sequences!r}.")
    if not (promote is None or isinstance(promote, bool)):
        raise InvalidOptionError(f"promote must be None, True or False, not {promote!r}.")


def _attribute(
    runner: Runner,
    tensors: list[torch.Tensor],
    parameters: list[ParameterReport],
    exact: ExactGradients,
    *,
    top_sequences: int,
    variance: bool,
) -> tuple[list[SequenceContribution], list[torch.Tensor] | None]:
    """The sequences behind a bias, and the exact variance when asked for and not yet known.

    Both need gradients of single sequences; when both are needed and the enumeration did not give
    the variance, one replay of every sequence alone serves both.
    """
    attribute = top_sequences > 0 and any(not p.ok for p in parameters)
    bias = [p.bias for p in parameters] if attribute else None
    variances = exact.variance if variance else None
    scores: list[float] | None = None
    if attribute and not (variance and variances is None):
        assert bias is not None
        scores = bias_contributions(runner, tensors, bias)
    if (variance and variances is None) or (attribute and scores is None):
        stats = sequence_statistics(runner, tensors, bias)
        variances = stats.variance if variance else None
        if attribute:
            scores = stats.contribution
    if scores is None:
        return [], variances
    found = runner.found
    probability = found.log_prob.exp()
    order = sorted(range(len(found)), key=lambda i: -scores[i])[:top_sequences]
    contributions = [
        SequenceContribution(
            choices=found.choices(i),
            probability=float(probability[i]),
            objective=float(found.objective[i]),
            contribution=scores[i],
        )
        for i in order
    ]
    return contributions, variances


def _report(
    runner: Runner,
    exact: ExactGradients,
    parameters: list[ParameterReport],
    directional: list[DirectionalCheck],
    contributions: list[SequenceContribution],
    *,
    disagreed: int,
    settings: dict[str, Any],
    seconds: float,
    precision_note: Note | None = None,
) -> CheckReport:
    found = runner.found
    notes: list[Note] = []
    if found.scoped:
        notes.append(ScopedDraws(outside_calls=found.outside_calls, runs=found.rows_run))
    if found.calls_recorded:
        notes.append(RecordedGraph(calls=found.calls_recorded, runs=found.rows_run))
    if found.calls_without_gradient:
        notes.append(
            DrawsWithoutGradient(
                calls=found.calls_without_gradient,
                gradient_off=found.calls_gradient_off,
                inference_mode=found.calls_inference_mode,
            )
        )
    if disagreed:
        notes.append(AutogradDisagreed(directions=disagreed))
    if precision_note is not None:
        notes.append(precision_note)
    probability_tolerance = max(1e-12 * len(found), 1e-10)
    ok = (
        all(p.ok for p in parameters)
        and all(c.ok for c in directional)
        and abs(exact.total_probability - 1.0) <= probability_tolerance
    )
    return CheckReport(
        ok=ok,
        num_sequences=len(found),
        total_probability=exact.total_probability,
        objective=exact.objective,
        max_abs_error=max(p.max_abs_error for p in parameters),
        max_rel_error=max(p.max_rel_error for p in parameters),
        parameters=parameters,
        finite_differences=directional,
        top_sequences=contributions,
        passes=found.passes,
        rows_run=found.rows_run,
        seconds=seconds,
        probability_tolerance=probability_tolerance,
        notes=[format_note(note) for note in notes],
        **settings,
    )
