"""Exact quantities computed from an enumeration.

With p(a) the probability of sequence a (a differentiable function of the parameters):

* J = sum_a p(a) objective(a), and its gradient by autograd (score and pathwise terms alike);
* the implementation's expected gradient E[grad loss] = sum_a p(a) grad loss(a), p(a) held constant;
* central finite differences of the exact J, the ground truth that needs no autograd;
* per-sequence statistics: the exact variance of the single-episode estimator grad loss(a), and each
  sequence's contribution to the bias, c(a) = p(a) grad loss(a) + grad[p(a) objective(a)], whose sum
  over a is E[grad loss] + grad J.

Gradients come from two :func:`torch.autograd.grad` calls on a graph, the first retaining it. In
sequential mode they are taken pass by pass, as soon as each run ends, so the memory a check needs
does not grow with the number of sequences; in batched mode, once, over the few rounds' graphs
together (or over a replay of the sequences alone, see :mod:`reinforce_check.enumeration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .enumeration import Enumeration, Episode, evaluate_objective, replay_all, replay_sequence, replaying
from .report import DirectionalCheck

__all__ = [
    "ExactGradients",
    "SequenceStatistics",
    "GradientAccumulator",
    "finite_differences",
    "sequence_statistics",
]


@dataclass
class ExactGradients:
    """J, its gradient and the implementation's expected gradient, per parameter tensor."""

    objective: float
    total_probability: float
    target: list[torch.Tensor]
    """-grad J: what E[grad loss] must equal."""
    estimate: list[torch.Tensor]
    """E[grad loss] = sum_a p(a) grad loss(a)."""


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


class GradientAccumulator:
    """Accumulates J, -grad J and E[grad loss] pass by pass (the ``on_pass`` hook of an enumeration).

    With ``variance``, a pass that completed a single sequence (sequential mode) also adds
    p(a) grad loss(a)**2, so the exact variance of the estimator comes at no extra cost; a batched
    pass adds only the sums.
    """

    def __init__(self, params: Sequence[torch.Tensor], *, variance: bool = True) -> None:
        self.params = list(params)
        self.track_variance = variance
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated (the enumeration restarted)."""
        self.objective = 0.0
        self.total_probability = 0.0
        self.grad_objective = [torch.zeros_like(p) for p in self.params]
        self.estimate = [torch.zeros_like(p) for p in self.params]
        self.second_moment: list[torch.Tensor] | None = (
            [torch.zeros_like(p) for p in self.params] if self.track_variance else None
        )

    def __call__(self, log_prob: torch.Tensor, objective: torch.Tensor, loss: torch.Tensor) -> None:
        probability = log_prob.exp()
        weighted = (probability * objective).sum()
        grad_objective = _grad(weighted, self.params, retain_graph=True)
        if probability.shape[0] == 1:
            weight = float(probability.detach()[0])
            grad_loss = _grad(loss.sum(), self.params)
            for total, g in zip(self.estimate, grad_loss):
                total.add_(g, alpha=weight)
            if self.second_moment is not None:
                for s, g in zip(self.second_moment, grad_loss):
                    s.addcmul_(g, g, value=weight)
        else:
            estimate = _grad((probability.detach() * loss).sum(), self.params)
            for total, g in zip(self.estimate, estimate):
                total.add_(g)
            self.second_moment = None
        for total, g in zip(self.grad_objective, grad_objective):
            total.add_(g)
        self.objective += float(weighted.detach())
        self.total_probability += float(probability.detach().sum())

    def result(self) -> ExactGradients:
        return ExactGradients(
            objective=self.objective,
            total_probability=self.total_probability,
            target=[-g for g in self.grad_objective],
            estimate=list(self.estimate),
        )

    def variance(self) -> list[torch.Tensor] | None:
        """Exact variance of grad loss(a), if every pass completed one sequence; else None."""
        if self.second_moment is None:
            return None
        return [(s - m * m).clamp_min(0) for s, m in zip(self.second_moment, self.estimate)]


def _shifted_objective(
    episode: Episode,
    found: Enumeration,
    params: Sequence[torch.Tensor],
    directions: Sequence[torch.Tensor | None],
    step: float,
    *,
    batched: bool,
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
            values.append(evaluate_objective(episode, found, batched=batched, guarded=False))
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
    ok = abs(numeric - autograd) <= atol + rtol * abs(autograd) and abs(numeric - estimate) <= atol + rtol * abs(
        autograd
    )
    return DirectionalCheck(label, numeric, autograd, estimate, ok)


def finite_differences(
    episode: Episode,
    found: Enumeration,
    names: Sequence[str],
    params: Sequence[torch.Tensor],
    exact: ExactGradients,
    *,
    mode: str,
    step: float,
    rtol: float,
    atol: float,
    seed: int,
    batched: bool,
) -> tuple[list[DirectionalCheck], list[torch.Tensor] | None]:
    """Check -grad J and E[grad loss] against central differences of the exact J.

    ``mode`` is ``"tensor"`` (one random unit direction per parameter tensor), ``"joint"`` (one random
    unit direction over all of them, followed by per-tensor directions if it disagrees, to say which
    tensor), ``"coordinate"`` (every coordinate; also returns the numeric gradient) or ``"none"``.
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
            numeric = _shifted_objective(episode, found, params, directions, step, batched=batched)
            checks.append(_directional(name, numeric, directions, exact, rtol, atol))
        return checks

    if mode not in ("tensor", "joint", "coordinate"):
        raise ValueError(f"unknown finite-difference mode {mode!r}")
    # Every evaluation of J replays the known sequences; they share one watch of the generators.
    with replaying(found):
        if mode == "tensor":
            return per_tensor(), None
        if mode == "joint":
            joint = [random_unit(p) for p in params]
            norm = sum(float((v * v).sum()) for v in joint) ** 0.5
            joint = [v / norm for v in joint]
            numeric = _shifted_objective(episode, found, params, list(joint), step, batched=batched)
            check = _directional("all parameters", numeric, list(joint), exact, rtol, atol)
            return ([check] if check.ok else [check, *per_tensor()]), None
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
                numeric = _shifted_objective(episode, found, params, directions, step, batched=batched)
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


def _unit(bias: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    norm = sum(float((b * b).sum()) for b in bias) ** 0.5
    return [b / norm for b in bias] if norm > 0 else None


def batched_contributions(
    episode: Episode, found: Enumeration, params: Sequence[torch.Tensor], bias: Sequence[torch.Tensor]
) -> list[float] | None:
    """Each sequence's contribution to the bias from one batched replay (batched mode).

    The projection <c(a), u> of every row's gradient on the unit bias direction u is a
    Jacobian-vector product; it comes from two backward passes (a vector-Jacobian product taken
    with ``create_graph``, then its gradient with respect to the row weights), however many rows
    there are. Returns None when an operation of the episode has no double backward.
    """
    unit = _unit(bias)
    if unit is None:
        return [0.0] * len(found)
    log_prob, objective, loss = replay_all(episode, found)
    probability = log_prob.exp()
    per_row = probability.detach() * loss + probability * objective
    if not per_row.requires_grad:
        return [0.0] * len(found)
    weights = torch.zeros_like(per_row, requires_grad=True)
    try:
        grads = torch.autograd.grad(per_row, list(params), grad_outputs=weights, create_graph=True, allow_unused=True)
        projected = sum(((g * u).sum() for g, u in zip(grads, unit) if g is not None), torch.zeros((), dtype=per_row.dtype))
        if not projected.requires_grad:
            return [0.0] * len(found)
        (contribution,) = torch.autograd.grad(projected, weights)
    except RuntimeError:
        return None
    return contribution.tolist()


def sequence_statistics(
    episode: Episode,
    found: Enumeration,
    params: Sequence[torch.Tensor],
    bias: Sequence[torch.Tensor] | None,
    *,
    batched: bool,
) -> SequenceStatistics:
    """Replay every sequence alone to get its own gradients: variance and bias contributions."""
    mean = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    second = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    unit = _unit(bias) if bias is not None else None
    contributions = []
    for index in range(len(found)):
        log_prob, objective, loss = replay_sequence(episode, found, index, batched=batched)
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
