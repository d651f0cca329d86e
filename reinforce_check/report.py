"""What a check found, and the text that tells a person.

:class:`CheckReport` holds every figure; :func:`format_report` builds its table (``str(report)``)
and :func:`format_mismatch` the message of :class:`ReinforceCheckError`. No other code writes
report text: the pytest plugin lays out its summary with :func:`format_table` and
:func:`format_probability`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Union

import torch

__all__ = [
    "AutogradDisagreed",
    "CheckReport",
    "DirectionalCheck",
    "DrawsWithoutGradient",
    "Note",
    "OwnPrecision",
    "ParameterReport",
    "PromotedEpisode",
    "RecordedGraph",
    "ReinforceCheckError",
    "ScopedDraws",
    "SequenceContribution",
    "format_mismatch",
    "format_note",
    "format_probability",
    "format_report",
    "format_table",
]


class ReinforceCheckError(AssertionError):
    """The implementation's expected gradient does not equal the exact gradient.

    An :class:`AssertionError`, so pytest shows it as an ordinary test failure. The report is
    attached as ``error.report``.
    """

    def __init__(self, message: str, report: CheckReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ParameterReport:
    """The comparison for one checked parameter tensor."""

    name: str
    shape: tuple[int, ...]
    target: torch.Tensor
    """-grad J, the exact gradient the loss's expected gradient must equal."""
    estimate: torch.Tensor
    """E[grad loss] = sum_a p(a) grad loss(a)."""
    mismatches: int
    """Elements outside ``atol + rtol * |target|``."""
    max_abs_error: float
    """Largest ``|estimate - target|``, over the mismatched elements when there are any."""
    max_rel_error: float
    """Largest ``|estimate - target| / |target|``: over the mismatched elements when there are any
    (infinite where the exact value is zero), else over elements with ``|target| > atol``."""
    worst_abs_index: tuple[int, ...]
    worst_rel_index: tuple[int, ...]
    variance: torch.Tensor | None = None
    """Exact variance of grad loss(a) under a ~ p, elementwise (when asked for)."""
    numeric: torch.Tensor | None = None
    """Finite-difference gradient of -J (coordinate mode only)."""
    reference: str = "autograd"
    """What ``target`` is: ``"autograd"`` (-grad J by autograd), ``"central differences"`` (every
    coordinate of -grad J by central differences of the exact J) or ``"central differences along a
    random direction"`` (``target`` is then the estimate with its component along that direction
    replaced by the numeric one, and ``mismatches`` counts that one direction)."""

    @property
    def bias(self) -> torch.Tensor:
        """Zero for an unbiased implementation: ``estimate - target``, that is E[grad loss] + grad J."""
        return self.estimate - self.target

    @property
    def ok(self) -> bool:
        return self.mismatches == 0


@dataclass
class DirectionalCheck:
    """Central differences of the exact J along one direction against both gradients."""

    label: str
    numeric: float
    autograd: float
    estimate: float
    ok: bool
    autograd_ok: bool = True
    """Whether autograd's -grad J agrees with the numeric derivative (when it does not, part of J's
    dependence on the parameters is detached from the graph, and central differences decide)."""


@dataclass
class SequenceContribution:
    """One action sequence and how much it contributes to the bias."""

    choices: list[tuple[str, int]]
    """The decisions that had a choice, as ``(sampler, action)``."""
    probability: float
    objective: float
    contribution: float
    """p(a) grad loss(a) + grad[p(a) objective(a)], projected on the unit bias direction."""


@dataclass(frozen=True)
class ScopedDraws:
    """A note: the check ran in scoped mode (the episode marks its policy with @enumerate_actions)."""

    outside_calls: int
    """Sampler calls outside marked code, sampled for real."""
    runs: int
    """Episode runs of the enumeration."""


@dataclass(frozen=True)
class DrawsWithoutGradient:
    """A note: some sampler calls received probabilities that carry no gradient."""

    calls: int
    gradient_off: int = 0
    """Of those, calls made with gradient recording off (``torch.no_grad()``, ``torch.inference_mode()``)."""
    inference_mode: int = 0
    """Of those, calls made under ``torch.inference_mode()``, which a check cannot record."""


@dataclass(frozen=True)
class RecordedGraph:
    """A note: code marked with ``enumerate_actions`` sampled where gradient recording was off, and
    the check recorded its graph anyway (see :mod:`reinforce_check.recording`)."""

    calls: int
    """Sampler calls whose probabilities carry gradient only because the check recorded it."""
    runs: int
    """Episode runs of the enumeration."""


@dataclass(frozen=True)
class AutogradDisagreed:
    """A note: autograd's -grad J disagreed with central differences of the exact J, which decided."""

    directions: int


@dataclass(frozen=True)
class PromotedEpisode:
    """A note: the episode ran promoted to float64 (``promote``; see :mod:`reinforce_check.precision`)."""

    dtypes: tuple[str, ...]
    """The lower-precision dtypes of the checked parameters (``"float32"``, ``"bfloat16"``); empty
    when ``promote=True`` promoted an episode whose parameters are float64."""
    parameters: int
    """Checked parameters that held float64 copies of their values during the check."""
    buffers: int
    """Buffers of the module passed as ``params`` that ran on copies during the check."""


@dataclass(frozen=True)
class OwnPrecision:
    """A note: the episode ran in its parameters' lower precision (``promote=False``), with
    tolerances no finer than that precision resolves."""

    dtypes: tuple[str, ...]
    """The lower-precision dtypes of the checked parameters, least precise first: the tolerances
    come from the first."""
    rtol: float
    atol: float
    fd_step: float
    fd_rtol: float
    fd_atol: float


Note = Union[ScopedDraws, DrawsWithoutGradient, RecordedGraph, AutogradDisagreed, PromotedEpisode, OwnPrecision]


def format_note(note: Note) -> str:
    """The text of a note, as the report prints it.

    >>> format_note(DrawsWithoutGradient(calls=2, gradient_off=2)).split(" (")[0]
    '2 sampler call(s) received probabilities that carry no gradient'
    >>> format_note(RecordedGraph(calls=4, runs=2)).split(",")[0]
    '4 sampler call(s) in 2 episode run(s) drew inside code marked with enumerate_actions where gradient recording was off'
    """
    if isinstance(note, PromotedEpisode):
        return _promoted(note)
    if isinstance(note, OwnPrecision):
        return (
            f"the episode ran in its parameters' own {' and '.join(note.dtypes)} (promote=False): tolerances finer "
            f"than {note.dtypes[0]} resolves were raised to sqrt(eps) and the central-difference step to "
            f"eps**(1/3), so the check used rtol={note.rtol:.3g}, atol={note.atol:.3g}, fd_step={note.fd_step:.3g}, "
            f"fd_rtol={note.fd_rtol:.3g}, fd_atol={note.fd_atol:.3g}. Promotion (the default) checks the same code "
            "in float64, with float64's tolerances."
        )
    if isinstance(note, ScopedDraws):
        return (
            "the episode uses @enumerate_actions: only draws inside it were enumerated; "
            f"{note.outside_calls} other sampler call(s) in {note.runs} episode run(s), and any other "
            "random draws, sampled for real from the generator state the check started with, restored "
            "before every run, so every sequence saw the same random numbers."
        )
    if isinstance(note, RecordedGraph):
        return (
            f"{note.calls} sampler call(s) in {note.runs} episode run(s) drew inside code marked with "
            "enumerate_actions where gradient recording was off, under torch.no_grad() or "
            "torch.set_grad_enabled(False) (or from tensors made there): the check recorded their graph "
            "anyway, so autograd's -grad J includes their score terms. The marked code and its caller got "
            "the values, and the tensors without gradient, that they get outside a check."
        )
    if isinstance(note, AutogradDisagreed):
        return (
            f"autograd's -grad J disagreed with central differences of the exact J along {note.directions} "
            "direction(s): part of J's dependence on the parameters is not in the graph (probabilities "
            "detached or computed outside torch, or an objective computed from detached values), so central "
            "differences decide."
        )
    text = (
        f"{note.calls} sampler call(s) received probabilities that carry no gradient ({note.gradient_off} "
        "with gradient recording off, under torch.no_grad() or torch.inference_mode(); the others detached "
        "or computed outside torch), so autograd's -grad J may miss their score terms"
    )
    if note.gradient_off:
        if note.inference_mode:
            advice = (
                f"{note.inference_mode} of them ran under torch.inference_mode(), which a check cannot "
                "record, even in marked code: to let autograd decide, at less cost, sample under "
                "torch.no_grad() there and mark the function that samples with enumerate_actions."
            )
        else:
            advice = (
                "To let autograd decide, at less cost, mark the function that samples with "
                "enumerate_actions (policy.act = enumerate_actions(policy.act)): during a check, marked "
                "code records its graph through torch.no_grad()."
            )
        return f"{text}: the verdict comes from central differences of the exact J instead. {advice}"
    return f"{text}: central differences of the exact J checked it, and would have decided had it disagreed."


def _promoted(note: PromotedEpisode) -> str:
    if note.dtypes:
        held = f"{note.parameters} {' and '.join(note.dtypes)} parameter(s) held float64 copies of their values"
        if note.buffers:
            held += f" and {note.buffers} buffer(s) of the module ran on copies"
        held += " during the check, and were put back after it; "
    else:
        held = "promote=True: "
    return (
        f"the episode ran promoted to float64: {held}every floating tensor the episode created or cast in a lower "
        "precision (.float(), dtype=torch.float32, torch.from_numpy of float32 data, autocast regions) was float64. "
        "The verdict is about the code's arithmetic in float64, not its rounding in lower precision."
    )


@dataclass
class CheckReport:
    """Everything a check measured. ``str(report)`` is a readable table.

    >>> import torch
    >>> from reinforce_check import check_reinforce
    >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    >>> def episode():
    ...     dist = torch.distributions.Categorical(logits=theta)
    ...     action = dist.sample()
    ...     reward = action.double()
    ...     return reward, -dist.log_prob(action) * reward
    >>> report = check_reinforce(episode, {"theta": theta})
    >>> report.ok, report.num_sequences
    (True, 2)
    """

    ok: bool
    num_sequences: int
    total_probability: float
    objective: float
    """The exact J(theta) = sum_a p(a) objective(a)."""
    max_abs_error: float
    max_rel_error: float
    parameters: list[ParameterReport]
    finite_differences: list[DirectionalCheck]
    top_sequences: list[SequenceContribution]
    """The sequences that contribute most to the bias (filled when the check finds one)."""
    rtol: float
    atol: float
    fd_mode: str
    fd_rtol: float
    fd_atol: float
    batched: bool
    passes: int
    rows_run: int
    seconds: float
    probability_tolerance: float
    notes: list[str] = field(default_factory=list)
    ground_truth: str = "autograd"
    """What decided the verdict: ``"autograd"`` (the exact -grad J by autograd, cross-checked by
    finite differences) or ``"finite differences"`` (central differences of the exact J, used when
    some sampler calls ran with gradient recording off outside code marked with
    ``enumerate_actions``, which records its graph during a check, or under
    ``torch.inference_mode()``, so autograd's -grad J may miss score terms, or when autograd's
    -grad J disagreed with them)."""
    precision: str = "float64"
    """The floating-point type the episode computed in: ``"float64"`` (its parameters' own, or
    promoted), or the parameters' lower precision (``"float32"``) when ``promote=False``."""
    promoted: bool = False
    """Whether the episode ran promoted to float64 (``promote``); a note says what was promoted."""

    @property
    def probability_ok(self) -> bool:
        return abs(self.total_probability - 1.0) <= self.probability_tolerance

    def __str__(self) -> str:
        return format_report(self)

    def to_dict(self) -> dict[str, Any]:
        """Every figure as plain Python values (tensors as nested lists), for JSON and tools.

        >>> import json, torch
        >>> from reinforce_check import check_reinforce
        >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> def episode():
        ...     dist = torch.distributions.Categorical(logits=theta)
        ...     action = dist.sample()
        ...     return action.double(), -dist.log_prob(action) * action.double()
        >>> data = check_reinforce(episode, {"theta": theta}).to_dict()
        >>> data["ok"], data["num_sequences"], data["parameters"][0]["name"]
        (True, 2, 'theta')
        >>> _ = json.dumps(data)
        """

        def plain(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return plain(value.tolist())
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)  # JSON has no inf or nan
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        data = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name not in _NESTED}
        data["parameters"] = [
            {f.name: plain(getattr(p, f.name)) for f in fields(p)} | {"bias": plain(p.bias), "ok": p.ok}
            for p in self.parameters
        ]
        data["finite_differences"] = [{f.name: plain(getattr(c, f.name)) for f in fields(c)} for c in self.finite_differences]
        data["top_sequences"] = [
            {"choices": [list(c) for c in s.choices], "probability": s.probability, "objective": s.objective,
             "contribution": s.contribution}
            for s in self.top_sequences
        ]
        data["probability_ok"] = self.probability_ok
        return data


_NESTED = {"parameters", "finite_differences", "top_sequences"}


def _index(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(i) for i in index) + ("," if len(index) == 1 else "") + ")"


def _g(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def format_probability(value: float) -> str:
    """A total probability as its distance from one, as the report and the pytest plugin write it.

    Arguments:
        value: the sum of the enumerated sequences' probabilities.

    Returns:
        ``1 exactly`` when the float64 sum is exactly one, else ``1 - d`` or ``1 + d`` with the
        distance ``d`` to two significant digits.

    >>> format_probability(1.0), format_probability(1 - 2.2e-16), format_probability(1.5)
    ('1 exactly', '1 - 2.2e-16', '1 + 5.0e-01')
    """
    if value == 1:
        return "1 exactly"
    return f"1 {'-' if value < 1 else '+'} {abs(1 - value):.1e}"


def format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lay out a text table: the header, a rule of dashes, then the rows, columns left-aligned.

    Each column is as wide as its widest cell, columns are two spaces apart, and trailing spaces
    are dropped.

    Arguments:
        header: the column titles.
        rows: the cells of each row, as many as ``header`` has titles.

    Returns:
        The lines of the table, without line endings.

    >>> print("\\n".join(format_table(["name", "value"], [["rtol", "1e-06"], ["max_sequences", "10,000"]])))
    name           value
    -------------  ------
    rtol           1e-06
    max_sequences  10,000
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return out


def _choices(choices: list[tuple[str, int]]) -> str:
    if not choices:
        return "(no choice)"
    return " ".join(str(a) for _, a in choices)


def _ground_truth(report: CheckReport) -> str:
    if report.ground_truth == "autograd":
        checked = "" if report.fd_mode == "none" else ", cross-checked by central differences of the exact J"
        return f"autograd's -grad J{checked}"
    return (
        f"central differences of the exact J (fd_rtol={report.fd_rtol:g}, fd_atol={report.fd_atol:g}): "
        "autograd's -grad J cannot see all of J's dependence on the parameters (see the notes)"
    )


def _compared(p: ParameterReport) -> str:
    """What ``p.mismatches`` counts out of: elements, or the one direction of a directional reference."""
    return "1 direction" if p.reference.endswith("direction") else str(math.prod(p.shape))


def _precision(report: CheckReport) -> str:
    return f"{report.precision} (promoted)" if report.promoted else report.precision


def format_report(report: CheckReport) -> str:
    """Render a :class:`CheckReport` as a text table (what ``str(report)`` returns)."""
    verdict = "PASSED" if report.ok else "FAILED"
    mode = "batched" if report.batched else "sequential"
    lines = [
        f"reinforce_check {verdict}: {report.num_sequences:,} action sequences, "
        f"total probability {format_probability(report.total_probability)}, J = {report.objective:.10g}",
        f"{mode} enumeration in {report.passes} episode call(s) ({report.rows_run:,} rows), "
        f"{report.seconds:.2f} s, {_precision(report)}; tolerance rtol={report.rtol:g}, atol={report.atol:g}",
        f"ground truth: {_ground_truth(report)}",
        "",
    ]
    with_variance = any(p.variance is not None for p in report.parameters)
    header = ["parameter", "shape", "mismatched", "max abs err", "max rel err", "|bias| max"]
    if with_variance:
        header.append("variance sum")
    rows = []
    for p in report.parameters:
        total = math.prod(p.shape)
        row = [
            p.name,
            _index(p.shape) if p.shape else "()",
            f"{p.mismatches}/{_compared(p)}",
            _g(p.max_abs_error),
            _g(p.max_rel_error),
            _g(float(p.bias.abs().max()) if total else 0.0),
        ]
        if with_variance:
            row.append(_g(float(p.variance.sum())) if p.variance is not None else "-")
        rows.append(row)
    lines += format_table(header, rows)
    if report.finite_differences:
        lines += ["", f"finite differences ({report.fd_mode}; rtol={report.fd_rtol:g}, atol={report.fd_atol:g}):"]
        fd_rows = [
            [c.label, f"{c.numeric:.10g}", f"{c.autograd:.10g}", f"{c.estimate:.10g}", "ok" if c.ok else "MISMATCH"]
            for c in report.finite_differences
        ]
        lines += format_table(["direction", "numeric -dJ", "autograd -dJ", "E[d loss]", ""], fd_rows)
    if not report.probability_ok:
        lines += [
            "",
            f"total probability {report.total_probability!r} differs from 1 by more than "
            f"{report.probability_tolerance:g}: the enumeration did not cover the sequences exactly once.",
        ]
    if report.top_sequences:
        lines += ["", "sequences contributing most to the bias (actions at each decision with a choice):"]
        seq_rows = [
            [_choices(s.choices), f"{s.probability:.4g}", f"{s.objective:.6g}", f"{s.contribution:.4g}"]
            for s in report.top_sequences
        ]
        lines += format_table(["actions", "p(a)", "objective", "contribution"], seq_rows)
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def format_mismatch(report: CheckReport) -> str:
    """The message of :class:`ReinforceCheckError`: what disagrees, where, and by how much."""
    bad = sorted((p for p in report.parameters if not p.ok), key=lambda p: -p.max_rel_error)
    lines = []
    autograd = report.ground_truth == "autograd"
    rtol, atol = (report.rtol, report.atol) if autograd else (report.fd_rtol, report.fd_atol)
    if bad:
        lines.append(
            f"REINFORCE gradient mismatch: the expected gradient of the loss, sum_a p(a) grad loss(a), "
            f"differs from -grad J for {len(bad)} of {len(report.parameters)} parameter tensors."
        )
        lines.append(f"Ground truth: {_ground_truth(report)}.")
        for p in bad:
            total = math.prod(p.shape)
            ai, ri = p.worst_abs_index, p.worst_rel_index
            lines += ["", f"Parameter {p.name!r} (shape {_index(p.shape) if p.shape else '()'}):"]
            if p.reference.endswith("direction"):
                lines += [
                    f"  Along a random unit direction: numeric -dJ and E[d loss] differ by {_g(p.max_abs_error)} "
                    f"(up to {atol:g} + {rtol:g} * |numeric| allowed; relative difference {_g(p.max_rel_error)})",
                    f"  At index {_index(ai)}: -dJ (estimate corrected along the direction) = "
                    f"{float(p.target[ai]):.10g}, E[d loss] = {float(p.estimate[ai]):.10g}",
                ]
                continue
            lines += [
                f"  Mismatched elements: {p.mismatches} / {total} ({100.0 * p.mismatches / max(total, 1):.1f}%)",
                f"  Greatest absolute difference: {_g(p.max_abs_error)} at index {_index(ai)} "
                f"(up to {atol:g} allowed)",
                f"  Greatest relative difference: {_g(p.max_rel_error)} at index {_index(ri)} "
                f"(up to {rtol:g} allowed)",
                f"  At index {_index(ai)}: -dJ = {float(p.target[ai]):.10g}, "
                f"E[d loss] = {float(p.estimate[ai]):.10g}",
            ]
    bad_fd = [c for c in report.finite_differences if not c.ok]
    if bad_fd:
        lines += [
            "",
            "Central differences of the exact J disagree with the gradients along "
            f"{len(bad_fd)} direction(s) (rtol={report.fd_rtol:g}, atol={report.fd_atol:g}):",
        ]
        lines += [
            f"  {c.label}: numeric -dJ = {c.numeric:.10g}, autograd -dJ = {c.autograd:.10g}, "
            f"E[d loss] = {c.estimate:.10g}"
            for c in bad_fd
        ]
        if not bad:
            lines.append(
                "  The loss matches autograd's gradient of J, but J itself changes differently: a probability "
                "or objective term is detached from the parameters somewhere (for example actions sampled "
                "from probs.detach() or under torch.no_grad()), so autograd cannot see part of the dependence."
            )
    if not report.probability_ok:
        lines += [
            "",
            f"The enumerated sequences have total probability {report.total_probability!r}, not 1.",
        ]
    lines += [f"Note: {n}" for n in report.notes]
    if report.top_sequences:
        lines += ["", "Sequences contributing most to the bias (actions, p(a), contribution):"]
        lines += [
            f"  {_choices(s.choices)}  p={s.probability:.4g}  contribution={s.contribution:.4g}"
            for s in report.top_sequences
        ]
    lines += [
        "",
        f"Enumerated {report.num_sequences:,} action sequences exactly ({_precision(report)}), total probability "
        f"{report.total_probability:.17g}, J = {report.objective:.10g}.",
    ]
    return "\n".join(lines).lstrip("\n")
