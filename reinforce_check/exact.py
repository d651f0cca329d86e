"""Exact quantities computed from an enumeration.

With p(a) the probability of sequence a (a differentiable function of the parameters):

* J = sum_a p(a) objective(a), and its gradient by autograd (score and pathwise terms alike);
* the implementation's expected gradient E[grad loss] = sum_a p(a) grad loss(a), p(a) held constant;
* central finite differences of the exact J, the ground truth that needs no autograd;
* per-sequence statistics: the exact variance of the single-episode estimator grad loss(a), and each
  sequence's contribution to the bias, c(a) = p(a) grad loss(a) + grad[p(a) objective(a)], whose sum
  over a is E[grad loss] + grad J.

Every function here consumes what a runner (:mod:`reinforce_check.enumeration`) offers, in plain
loops, whatever its mode. Gradients come from two :func:`torch.autograd.grad` calls on each block of
rows the runner yields, the first retaining the graph: in sequential mode pass by pass, as soon as
each run ends, so the memory a check needs does not grow with the number of sequences; in batched
mode once, over the rounds' graphs together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .enumeration import Rows, Runner
from .report import DirectionalCheck

__all__ = [
    "COORDINATE_BUDGET",
    "COORDINATE_LIMIT",
    "ExactGradients",
    "NumericReference",
    "SequenceStatistics",
    "bias_contributions",
    "exact_gradients",
    "finite_differences",
    "numeric_reference",
    "sequence_statistics",
]

COORDINATE_LIMIT = 16
"""Tensors of at most this many elements get every coordinate's central difference when finite
differences are the ground truth (while :data:`COORDINATE_BUDGET` lasts); larger ones get one
random unit direction (2 evaluations of J). Each coordinate costs a full evaluation of J twice: a
small bias vector is worth it, a layer's 64 biases (128 evaluations) are not."""

COORDINATE_BUDGET = 64
"""At most this many coordinates in all, tensor by tensor in the order given, when finite
differences are the ground truth: 2 evaluations of J each. Tensors past it get one direction."""


@dataclass
class ExactGradients:
    """J, its gradient and the implementation's expected gradient, per parameter tensor."""

    objective: float
    total_probability: float
    target: list[torch.Tensor]
    """-grad J: what E[grad loss] must equal."""
    estimate: list[torch.Tensor]
    """E[grad loss] = sum_a p(a) grad loss(a)."""
    variance: list[torch.Tensor] | None = None
    """Exact variance of grad loss(a), when every block held one sequence (sequential mode)."""


@dataclass
class SequenceStatistics:
    """Per-sequence quantities that need one gradient per sequence."""

    variance: list[torch.Tensor]
    """Exact variance of grad loss(a), a ~ p, elementwise per parameter tensor."""
    contribution: list[float]
    """Each sequence's contribution c(a) projected on the unit bias direction (0 when unbiased)."""


def _grad(output: torch.Tensor, inputs: Sequence[torch.Tensor], *, retain_graph: bool = False) -> list[torch.Tensor]:
    if not output.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    grads = torch.autograd.grad(output, list(inputs), retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


def exact_gradients(blocks: Iterable[Rows], params: Sequence[torch.Tensor], *, variance: bool = False) -> ExactGradients:
    """J, -grad J and E[grad loss] summed over the blocks of rows an enumeration yields.

    With ``variance``, a block of a single sequence also adds p(a) grad loss(a)**2, so the exact
    variance of the estimator comes at no extra cost when every block is one sequence.
    """
    params = list(params)
    objective = 0.0
    total_probability = 0.0
    grad_objective = [torch.zeros_like(p) for p in params]
    estimate = [torch.zeros_like(p) for p in params]
    second_moment: list[torch.Tensor] | None = [torch.zeros_like(p) for p in params] if variance else None
    for log_prob, block_objective, loss in blocks:
        probability = log_prob.exp()
        weighted = (probability * block_objective).sum()
        torch._foreach_add_(grad_objective, _grad(weighted, params, retain_graph=True))
        if probability.shape[0] == 1:
            weight = float(probability.detach()[0])
            grad_loss = _grad(loss.sum(), params)
            torch._foreach_add_(estimate, grad_loss, alpha=weight)
            if second_moment is not None:
                torch._foreach_addcmul_(second_moment, grad_loss, grad_loss, value=weight)
        else:
            torch._foreach_add_(estimate, _grad((probability.detach() * loss).sum(), params))
            second_moment = None
        objective += float(weighted.detach())
        total_probability += float(probability.detach().sum())
    return ExactGradients(
        objective=objective,
        total_probability=total_probability,
        target=[-g for g in grad_objective],
        estimate=estimate,
        variance=None if second_moment is None else [(s - m * m).clamp_min(0) for s, m in zip(second_moment, estimate)],
    )


def _shifted_objective(
    runner: Runner, params: Sequence[torch.Tensor], directions: Sequence[torch.Tensor | None], step: float
) -> float:
    saved = [p.detach().clone() for p in params]
    try:
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, original, direction in zip(params, saved, directions):
                    p.copy_(original)
                    if direction is not None:
                        p.add_(direction, alpha=sign * step)
            values.append(runner.objective())
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved):
                p.copy_(original)
    # A decrease of J along v is an increase of the loss the implementation minimizes.
    return -(values[0] - values[1]) / (2 * step)


def _directional(
    label: str,
    numeric: float,
    directions: Sequence[torch.Tensor | None],
    exact: ExactGradients,
    rtol: float,
    atol: float,
) -> DirectionalCheck:
    autograd = sum(float((t * d).sum()) for t, d in zip(exact.target, directions) if d is not None)
    estimate = sum(float((e * d).sum()) for e, d in zip(exact.estimate, directions) if d is not None)
    autograd_ok = abs(numeric - autograd) <= atol + rtol * abs(autograd)
    ok = autograd_ok and abs(numeric - estimate) <= atol + rtol * abs(autograd)
    return DirectionalCheck(label, numeric, autograd, estimate, ok, autograd_ok=autograd_ok)


def _joint(
    runner: Runner,
    params: Sequence[torch.Tensor],
    exact: ExactGradients,
    random_unit: Callable[[torch.Tensor], torch.Tensor],
    step: float,
    rtol: float,
    atol: float,
) -> DirectionalCheck:
    """One random unit direction over every tensor. It names no culprit, and needs none: where
    autograd agrees with it, -grad J is verified and the element-wise comparison names the tensors
    the estimate gets wrong; where autograd disagrees, central differences become the ground truth
    and take every tensor in turn."""
    units = [random_unit(p) for p in params]
    norm = sum(float((v * v).sum()) for v in units) ** 0.5
    directions: list[torch.Tensor | None] = [v / norm for v in units]
    numeric = _shifted_objective(runner, params, directions, step)
    return _directional("all parameters", numeric, directions, exact, rtol, atol)


def finite_differences(
    runner: Runner,
    names: Sequence[str],
    params: Sequence[torch.Tensor],
    exact: ExactGradients,
    *,
    mode: str,
    step: float,
    rtol: float,
    atol: float,
    seed: int,
) -> tuple[list[DirectionalCheck], list[torch.Tensor] | None]:
    """Check -grad J and E[grad loss] against central differences of the exact J.

    ``mode`` is ``"tensor"`` (one random unit direction per parameter tensor), ``"joint"`` (one random
    unit direction over all of them),
    ``"coordinate"`` (every coordinate; also returns the numeric gradient) or ``"none"``.
    Directions come from a private generator seeded with ``seed``, so the user's RNG is untouched.
    """
    if mode == "none":
        return [], None
    generator = torch.Generator().manual_seed(seed)

    def random_unit(p: torch.Tensor) -> torch.Tensor:
        v = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
        return v / v.norm().clamp_min(1e-300)

    def per_tensor() -> list[DirectionalCheck]:
        checks = []
        for index, (name, p) in enumerate(zip(names, params)):
            directions: list[torch.Tensor | None] = [None] * len(params)
            directions[index] = random_unit(p)
            numeric = _shifted_objective(runner, params, directions, step)
            checks.append(_directional(name, numeric, directions, exact, rtol, atol))
        return checks

    if mode not in ("tensor", "joint", "coordinate"):
        raise ValueError(f"unknown finite-difference mode {mode!r}")
    # Every evaluation of J replays the known sequences; they share one watch of the generators.
    with runner.replaying():
        if mode == "tensor":
            return per_tensor(), None
        if mode == "joint":
            return [_joint(runner, params, exact, random_unit, step, rtol, atol)], None
        # mode == "coordinate"
        checks = []
        gradients = []
        for index, (name, p) in enumerate(zip(names, params)):
            numeric_grad = torch.zeros_like(p)
            for flat in range(p.numel()):
                unit = torch.zeros_like(p).reshape(-1)
                unit[flat] = 1.0
                directions: list[torch.Tensor | None] = [None] * len(params)
                directions[index] = unit.reshape(p.shape)
                numeric = _shifted_objective(runner, params, directions, step)
                numeric_grad.reshape(-1)[flat] = numeric
                check = _directional(f"{name}[{flat}]", numeric, directions, exact, rtol, atol)
                if not check.ok:
                    checks.append(check)
            gradients.append(numeric_grad)
            if not any(c.label.startswith(f"{name}[") for c in checks):
                checks.append(
                    DirectionalCheck(
                        f"{name} (all {p.numel()} coordinates)",
                        float(numeric_grad.abs().max()) if p.numel() else 0.0,
                        float(exact.target[index].abs().max()) if p.numel() else 0.0,
                        float(exact.estimate[index].abs().max()) if p.numel() else 0.0,
                        True,
                    )
                )
        return checks, gradients


@dataclass
class NumericReference:
    """-grad J by central differences of the exact J, for a check whose autograd reference is unsound.

    For a tensor of at most :data:`COORDINATE_LIMIT` elements, ``gradient`` holds the whole numeric
    gradient; for a larger one it is None and ``direction`` holds one random unit direction, along
    which ``numeric`` is the numeric derivative.
    """

    gradient: list[torch.Tensor | None]
    direction: list[torch.Tensor | None]
    numeric: list[float | None]
    evaluations: int
    """Evaluations of the exact J spent."""


def numeric_reference(
    runner: Runner,
    params: Sequence[torch.Tensor],
    *,
    step: float,
    seed: int,
    coordinate_limit: int = COORDINATE_LIMIT,
    coordinate_budget: int = COORDINATE_BUDGET,
) -> NumericReference:
    """-grad J from central differences of the exact J alone, per parameter tensor.

    Every coordinate of a tensor of at most ``coordinate_limit`` elements (2 evaluations of J each)
    while the coordinates taken stay within ``coordinate_budget``; one random unit direction of any
    other tensor (2 evaluations), drawn from a private generator seeded with ``seed``.

    >>> from reinforce_check.enumeration import SequentialRunner
    >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    >>> def episode():
    ...     coin = torch.distributions.Bernoulli(logits=theta[0]).sample()
    ...     return coin, torch.zeros((), dtype=torch.float64)
    >>> runner = SequentialRunner(episode, max_sequences=10)
    >>> _ = list(runner.passes())
    >>> reference = numeric_reference(runner, [theta], step=1e-6, seed=0)
    >>> [round(g, 6) + 0.0 for g in reference.gradient[0].tolist()], reference.evaluations  # -grad J: J = sigmoid(theta0)
    ([-0.25, 0.0], 4)
    """
    budget = coordinate_budget
    generator = torch.Generator().manual_seed(seed)
    gradients: list[torch.Tensor | None] = []
    directions: list[torch.Tensor | None] = []
    numerics: list[float | None] = []
    evaluations = 0
    with runner.replaying():
        for index, p in enumerate(params):
            shifted: list[torch.Tensor | None] = [None] * len(params)
            if p.numel() <= min(coordinate_limit, budget):
                budget -= p.numel()
                gradient = torch.zeros_like(p)
                for flat in range(p.numel()):
                    unit = torch.zeros_like(p)
                    unit.reshape(-1)[flat] = 1.0
                    shifted[index] = unit
                    gradient.reshape(-1)[flat] = _shifted_objective(runner, params, shifted, step)
                    evaluations += 2
                gradients.append(gradient)
                directions.append(None)
                numerics.append(None)
            else:
                v = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
                v = v / v.norm().clamp_min(1e-300)
                shifted[index] = v
                numerics.append(_shifted_objective(runner, params, shifted, step))
                evaluations += 2
                gradients.append(None)
                directions.append(v)
    return NumericReference(gradients, directions, numerics, evaluations)


def _unit(bias: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    norm = sum(float((b * b).sum()) for b in bias) ** 0.5
    return [b / norm for b in bias] if norm > 0 else None


def _block_contributions(rows: Rows, params: Sequence[torch.Tensor], unit: Sequence[torch.Tensor]) -> list[float] | None:
    """<c(a), u> for every row of a block, or None when the episode has no double backward.

    For a block of several rows, the projection of every row's gradient on ``u`` is a
    Jacobian-vector product; it comes from two backward passes (a vector-Jacobian product taken
    with ``create_graph``, then its gradient with respect to the row weights), however many rows
    there are.
    """
    probability = rows.log_prob.exp()
    per_row = probability.detach() * rows.loss + probability * rows.objective
    if not per_row.requires_grad:
        return [0.0] * per_row.shape[0]
    if per_row.shape[0] == 1:
        grads = _grad(per_row.sum(), params)
        return [sum(float((g * u).sum()) for g, u in zip(grads, unit))]
    weights = torch.zeros_like(per_row, requires_grad=True)
    try:
        grads = torch.autograd.grad(per_row, list(params), grad_outputs=weights, create_graph=True, allow_unused=True)
        projected = sum(((g * u).sum() for g, u in zip(grads, unit) if g is not None), torch.zeros((), dtype=per_row.dtype))
        if not projected.requires_grad:
            return [0.0] * per_row.shape[0]
        (contribution,) = torch.autograd.grad(projected, weights)
    except RuntimeError:
        return None
    return contribution.tolist()


def bias_contributions(runner: Runner, params: Sequence[torch.Tensor], bias: Sequence[torch.Tensor]) -> list[float] | None:
    """Each sequence's contribution to the bias, projected on the unit bias direction, from the
    runner's replays of every sequence. Returns None when an operation of the episode has no double
    backward (:func:`sequence_statistics` then gives them one sequence at a time)."""
    unit = _unit(bias)
    if unit is None:
        return [0.0] * len(runner.found)
    contributions: list[float] = []
    for rows in runner.replay_blocks():
        block = _block_contributions(rows, params, unit)
        if block is None:
            return None
        contributions.extend(block)
    return contributions


def sequence_statistics(
    runner: Runner, params: Sequence[torch.Tensor], bias: Sequence[torch.Tensor] | None
) -> SequenceStatistics:
    """Replay every sequence alone to get its own gradients: variance and bias contributions."""
    mean = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    second = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    unit = _unit(bias) if bias is not None else None
    contributions = []
    for index in range(len(runner.found)):
        log_prob, objective, loss = runner.replay(index)
        probability = log_prob.exp()
        weight = probability.detach()
        grad_loss = _grad(loss, params, retain_graph=True)
        for m, s, g in zip(mean, second, grad_loss):
            m.add_(weight * g)
            s.add_(weight * g * g)
        if unit is not None:
            grad_term = _grad(probability * objective, params)
            contributions.append(
                sum(float(((weight * g + t) * u).sum()) for g, t, u in zip(grad_loss, grad_term, unit))
            )
        else:
            contributions.append(0.0)
    variance = [(s - m * m).clamp_min(0) for m, s in zip(mean, second)]
    return SequenceStatistics(variance=variance, contribution=contributions)
