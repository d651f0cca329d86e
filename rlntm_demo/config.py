"""Configuration dataclasses of the RL-NTM demo, one docstring per field: the model
(:class:`ModelConfig`), the loss (:class:`ObjectiveConfig`), and a training run
(:class:`TrainConfig`, with its :class:`OptimizerConfig`, :class:`CurriculumConfig` and
:class:`EvaluationConfig`; :mod:`rlntm_demo.presets` fills them in).

Every default follows the paper (Zaremba & Sutskever, "Reinforcement Learning Neural Turing
Machines"); where the paper is silent the default follows what the authors' released code did, and
the field's docstring says so. Nothing here touches global state: building a config only validates
it.

The symbol alphabet is shared by tasks, tapes and the controller, so it lives here too:

=========  =====  ==============================================================
constant   index  meaning
=========  =====  ==============================================================
BLANK      0      padding; what a tape reads outside its contents
EOS        1      the end-of-sequence symbol (the paper's empty set)
data       2..31  the 30 data symbols x_i (``FIRST_DATA_SYMBOL + k``)
PLUS       32     separates the two operands of the addition task
REPEAT_2   33     "copy twice", written in the first cell of a RepeatCopy input
REPEAT_3   34     "copy three times"
=========  =====  ==============================================================

>>> NUM_SYMBOLS, FIRST_DATA_SYMBOL + NUM_DATA_SYMBOLS - 1
(35, 31)
>>> ModelConfig(controller="lstm").memory_width
35
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BLANK",
    "CONTROLLERS",
    "EOS",
    "FIRST_DATA_SYMBOL",
    "ADJACENT_MEMORY",
    "DIRECT_ACCESS",
    "BASELINES",
    "CURRICULUM_ERRORS",
    "ENTROPY_MODES",
    "CurriculumConfig",
    "EvaluationConfig",
    "InterfaceSpec",
    "ModelConfig",
    "NUM_DATA_SYMBOLS",
    "NUM_SYMBOLS",
    "OPTIMIZERS",
    "ObjectiveConfig",
    "OptimizerConfig",
    "PLUS",
    "REPEAT_2",
    "REPEAT_3",
    "RETURNS",
    "STEP_IMPLS",
    "TrainConfig",
]

BLANK = 0
"""Padding, and what a tape reads outside its contents."""
EOS = 1
"""The end-of-sequence symbol that closes every input and every target."""
FIRST_DATA_SYMBOL = 2
"""Data symbol ``k`` (0-based) has index ``FIRST_DATA_SYMBOL + k``."""
NUM_DATA_SYMBOLS = 30
"""The paper draws the x_i uniformly from a set of size 30."""
PLUS = 32
"""The operator between the two operands of the addition task."""
REPEAT_2 = 33
"""First input cell of a RepeatCopy instance that asks for two copies."""
REPEAT_3 = 34
"""First input cell of a RepeatCopy instance that asks for three copies."""
NUM_SYMBOLS = 35
"""Size of the alphabet: the prediction is a distribution over it, and it is the default width of
a memory cell (which is what lets direct access add a one-hot input symbol to a memory cell)."""

CONTROLLERS = ("lstm", "direct", "feedforward")
"""Controller names: an LSTM, the direct-access LSTM of Section 8.1, a one-layer feed-forward net."""
BASELINES = ("none", "online", "offline", "both")
"""Baseline options: none, the per-step moving average, the baseline LSTM of Appendix A, or their sum."""
STEP_IMPLS = ("fast", "reference")
"""How an episode's steps are computed: :mod:`rlntm_demo.fast` (the default) or the readable
:mod:`rlntm_demo.reference`, which defines the model (the two agree up to rounding)."""
ADJACENT_MEMORY = ("open", "closed", "off")
"""The direct-access controller's adjacent-memory gates (:attr:`ModelConfig.adjacent_memory`)."""
DIRECT_ACCESS = ("paper", "authors")
"""The direct-access controller's shortcuts (:attr:`ModelConfig.direct_access`): the paper's five
scalar gates on the current cells, or the authors' gates over the whole read window."""
ENTROPY_MODES = ("returns", "per-step")
"""How the entropy regularizer enters the loss (:attr:`ObjectiveConfig.entropy_mode`)."""
CURRICULUM_ERRORS = ("batch", "authors")
"""Which error the curriculum compares with its threshold (:attr:`CurriculumConfig.error`)."""
RETURNS = ("reward-to-go", "total")
"""What multiplies the score of the actions of step t: R_t = sum_{s>=t} r_s, or the episode's total."""


@dataclass(frozen=True)
class InterfaceSpec:
    """Which interfaces a task offers the controller (Table 2 of the paper).

    The output tape is always present, and so is the input tape, which is either free (moves
    {-1, 0, +1}) or forward-only ({0, +1}).

    >>> InterfaceSpec(forward_only_input=True, memory=True)
    InterfaceSpec(forward_only_input=True, memory=True)
    """

    forward_only_input: bool = False
    """The input head may only stay or move right (ForwardReverse): reversing then needs memory."""
    memory: bool = True
    """The controller has a memory tape (cells of real vectors, read and written at its head)."""


@dataclass
class ModelConfig:
    """The RL-NTM: controller, tapes and baselines.

    >>> ModelConfig(controller="gru")
    Traceback (most recent call last):
    ...
    ValueError: unknown controller 'gru'; choose one of: lstm, direct, feedforward
    """

    controller: str = "direct"
    """``"lstm"``, ``"direct"`` (direct access, Section 8.1) or ``"feedforward"``. Direct access is
    the only controller that solved every task of the paper (Table 4)."""
    hidden_size: int = 25
    """Units of the controller (the authors' runs used 25 LSTM units)."""
    embedding_size: int = 35
    """Width of the learned embeddings of the input symbol and of each previous action (the
    authors' code used 35 for all of them)."""
    interfaces: InterfaceSpec = field(default_factory=InterfaceSpec)
    """Which tapes exist; take it from the task: ``ModelConfig(interfaces=task.interfaces)``."""
    memory_cells: int = 30
    """Cells of the memory tape (the authors' code: 30). The memory head wraps around.
    Evaluation and traces use more where an instance needs more
    (:meth:`~rlntm_demo.model.RLNTM.memory_cells_for`)."""
    memory_width: int = NUM_SYMBOLS
    """Real values per memory cell: 35 in the paper ("the memory consists of 35 real values").
    Direct access needs it equal to ``NUM_SYMBOLS``."""
    circular_input: bool = False
    """The input head wraps around the input ``x1 .. xC EOS``, as every tape of the authors' code
    did: moving left from ``x1`` reads ``EOS``, moving right from ``EOS`` reads ``x1``. False (the
    paper says nothing): a move off either end is infeasible. A forward-only input never wraps,
    or it could read its input twice."""
    read_window: int = 0
    """The controller reads cells ``head - k .. head + k`` of the input and memory tapes. 0 (the
    paper): only the current cell; the authors' code read k = 2."""
    inverse_temperature: float = 0.01
    """Multiplies the logits of the three action distributions (the paper: 0.01; the authors'
    RepeatCopy run: 0.03). Small values slow down the REINFORCE part of learning."""
    init_std: float | None = 0.1
    """Every parameter starts as N(0, init_std^2) (the paper: 0.1, for the controller and the
    baseline network); ``None`` keeps torch's default initialization."""
    baseline: str = "both"
    """``"none"``, ``"online"`` (per-step moving average of R_t over past batches),
    ``"offline"`` (the baseline LSTM of Appendix A) or ``"both"`` (their sum: the LSTM then
    learns what the moving average misses). The paper used both."""
    baseline_hidden_size: int = 25
    """Units of the baseline LSTM."""
    online_decay: float = 0.9
    """Decay of the per-step moving average: b_t <- decay * b_t + (1 - decay) * mean R_t."""
    max_steps: int = 512
    """Longest training episode the per-step moving average has a slot for. Greedy episodes
    (evaluation) may run longer: past ``max_steps`` they reuse the last slot's value."""
    initial_state: float = 0.0
    """The value every entry of the controller's initial hidden and cell state (and the baseline
    LSTM's) starts at. The paper: zero; the authors' code: 0.1."""
    shortcut_scale: float | None = None
    """Direct access only: ``None`` (the paper, and the authors' code): each shortcut into the
    prediction logits adds ``sigmoid(w . h + b)`` times the one-hot input symbol (or the memory
    cell), at most +1 logit. A number s > 0: each of the two is further multiplied by its own
    learnable positive scale ``softplus(rho)``, initialised to s, so that a head on the right cell
    can dominate the logits (a departure from the paper; see ``docs/rlntm.rst``). Issue 19's
    diagnosis: with at most +1 logit, a well-placed head earns log p of about -2.6, so the policy
    learns to hold the symbols in the LSTM instead."""
    adjacent_memory: str = "open"
    """Direct access with memory only: the gates that add the left and right neighbour cells to
    the cell being written. ``"open"`` (today's default): gates initialised like every other
    parameter; ``"closed"``: their biases start at ``-6`` (sigmoid 0.0025), so the neighbours
    leak in only if learning opens them; ``"off"``: no such path, as in the authors' code."""
    direct_access: str = "paper"
    """Direct access only: which shortcuts (:data:`DIRECT_ACCESS`). ``"paper"``: five scalar gates
    (Section 8.1) on the current input symbol and memory cell, and the head's cell alone is written.
    ``"authors"``: the authors' code (``super_direct``; ``shared/notes/authors-code.md``, section 2)
    over the read window of ``2 read_window + 1`` cells of each tape: every memory cell of the
    window is written, each with its own keep gate and value; then, for every (memory offset, input
    offset) pair, two gates ``p2, p`` update the memory cell to ``p2 * cell + p * onehot(symbol)``,
    the input offsets in increasing order; the prediction adds every input symbol of the window
    and every (freshly written) memory cell of the window, each through its own gate (and the
    scales of ``shortcut_scale``, one for the symbols and one for the cells). It has no
    adjacent-memory gates (``adjacent_memory = "off"``), needs ``memory_cells >= 2 read_window +
    1`` so that the window's cells are distinct. The fast step runs it in its Python loop (the C++
    loop has no window write)."""
    input_start_marker: bool = False
    """Give the input tape a visible left end: every input becomes ``BLANK x1 .. xC EOS``, the
    head starts on the ``BLANK`` and the step bound grows by one
    (:meth:`~rlntm_demo.tasks.Batch.with_start_marker`). The right end is visible already
    (``EOS``). False (the paper and the authors' code): the first cell holds ``x1``, a move left
    of it is infeasible and the controller never sees that, so a reversal must count to know
    when it is back at ``x1``. A departure from the paper; see ``docs/rlntm.rst``."""
    memory_start_marker: bool = False
    """With memory: the cell under the memory head at the first step starts as all ones, every
    other cell at zero, as in the authors' code (train_curriculum0 382; ``shared/notes/authors-code.md``,
    section 2), so the memory has a landmark where the head started. False (the paper): the whole
    memory starts at zero."""
    step_impl: str = "fast"
    """How the steps are computed (:data:`STEP_IMPLS`): ``"fast"``, the fused loop of
    :mod:`rlntm_demo.fast` (in C++ where it is built), or ``"reference"``, the readable step of
    :mod:`rlntm_demo.reference` that defines the model, several times slower. The same values,
    decisions and gradients up to rounding."""

    def __post_init__(self) -> None:
        if self.controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {self.controller!r}; choose one of: {', '.join(CONTROLLERS)}")
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of: {', '.join(BASELINES)}")
        if self.step_impl not in STEP_IMPLS:
            raise ValueError(f"unknown step_impl {self.step_impl!r}; choose one of: {', '.join(STEP_IMPLS)}")
        for name in ("hidden_size", "embedding_size", "memory_cells", "memory_width", "baseline_hidden_size", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.read_window < 0:
            raise ValueError(f"read_window must be at least 0, not {self.read_window}")
        if self.controller == "direct" and self.interfaces.memory and self.memory_width != NUM_SYMBOLS:
            raise ValueError(
                f"direct access adds one-hot symbols to memory cells, so memory_width must be "
                f"NUM_SYMBOLS = {NUM_SYMBOLS}, not {self.memory_width}"
            )
        if self.shortcut_scale is not None and not (math.isfinite(self.shortcut_scale) and self.shortcut_scale > 0):
            raise ValueError(f"shortcut_scale must be a positive number or None, not {self.shortcut_scale}")
        if self.adjacent_memory not in ADJACENT_MEMORY:
            raise ValueError(
                f"unknown adjacent_memory {self.adjacent_memory!r}; choose one of: {', '.join(ADJACENT_MEMORY)}"
            )
        if self.direct_access not in DIRECT_ACCESS:
            raise ValueError(
                f"unknown direct_access {self.direct_access!r}; choose one of: {', '.join(DIRECT_ACCESS)}"
            )
        if self.controller == "direct" and self.direct_access == "authors":
            self._check_authors_direct_access()
        if not math.isfinite(self.initial_state):
            raise ValueError(f"initial_state must be finite, not {self.initial_state}")
        if not 0.0 <= self.online_decay < 1.0:
            raise ValueError(f"online_decay must be in [0, 1), not {self.online_decay}")

    def _check_authors_direct_access(self) -> None:
        if self.adjacent_memory != "off":
            raise ValueError(
                "direct_access='authors' has no adjacent-memory gates: set adjacent_memory='off' "
                "(--set model.adjacent_memory=off)"
            )
        window = 2 * self.read_window + 1
        if self.interfaces.memory and self.memory_cells < window:
            raise ValueError(
                f"direct_access='authors' writes the {window} cells of the read window, which must be distinct: "
                f"memory_cells must be at least {window}, not {self.memory_cells}"
            )

    @property
    def online_baseline(self) -> bool:
        """Whether the per-step moving average is part of the baseline."""
        return self.baseline in ("online", "both")

    @property
    def offline_baseline(self) -> bool:
        """Whether the baseline LSTM is part of the baseline."""
        return self.baseline in ("offline", "both")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and logs."""
        return asdict(self)


@dataclass
class ObjectiveConfig:
    """How an episode's rewards become a loss (see :mod:`rlntm_demo.objective`).

    >>> ObjectiveConfig().returns
    'reward-to-go'
    """

    returns: str = "reward-to-go"
    """``"reward-to-go"`` (Appendix A, "causality of actions"): the actions of step t are
    reinforced by R_t = sum_{s>=t} r_s; ``"total"``: by the whole episode's return R_1 (plain
    REINFORCE, Section 4), which is also unbiased but noisier."""
    entropy_bonus: float = 0.0
    """beta >= 0: every step's reward gets ``-beta log p(a_t)``, the surprise of its sampled
    decisions, so the expected return becomes ``J + beta H``, with H the entropy of the whole
    action sequence given the input. It keeps the policy exploring instead of locking into the
    first habit that pays (reading and writing at once, on Reverse). 0, the paper's objective,
    leaves J unchanged. The exact check covers it: ``rlntm-demo check --entropy-bonus``."""
    entropy_mode: str = "returns"
    """How the entropy regularizer of weight ``entropy_bonus`` enters the loss.

    * ``"returns"`` (today's): the bonus ``-beta log p(a_t)`` is a reward, paid through the
      returns, so a decision is also reinforced for the uncertainty of the steps after it: the
      policy is paid to reach and prolong states where it wanders (idle moves of the input
      head, on RepeatCopy). Objective ``J + beta H``, H the entropy of the action sequence.
    * ``"per-step"``: a term ``-beta sum_t H_t`` in the loss, H_t the entropy of step t's
      decision distributions, differentiated where it stands only, as A3C and PPO do: every
      step's distribution is pushed towards uniform, and no step is paid for where the episode
      goes. It is the exact gradient, at the current weights theta0, of
      ``J(theta) + beta E_{a ~ p_theta0}[sum_t H_t(theta)]``, the per-step entropy averaged over
      the episodes the current policy runs (that distribution held fixed), which is what the
      exact check verifies (``rlntm-demo check --entropy-bonus B --entropy-mode per-step``).
      A departure from the paper (which has no entropy term) and from the authors' code.
    """
    entropy_bonus_at_top: float | None = None
    """The entropy bonus once the curriculum is at its top level (``None``: ``entropy_bonus``
    throughout). The ``fast`` preset sets 0: the bonus explores while the instances grow, then
    the policy may sharpen, which is what greedy decoding needs."""

    def __post_init__(self) -> None:
        if not (isinstance(self.entropy_bonus, (int, float)) and self.entropy_bonus >= 0):
            raise ValueError(f"entropy_bonus must be a number >= 0, not {self.entropy_bonus}")
        if self.entropy_bonus_at_top is not None and not self.entropy_bonus_at_top >= 0:
            raise ValueError(f"entropy_bonus_at_top must be a number >= 0 or null, not {self.entropy_bonus_at_top}")
        if self.entropy_mode not in ENTROPY_MODES:
            raise ValueError(f"unknown entropy_mode {self.entropy_mode!r}; choose one of: {', '.join(ENTROPY_MODES)}")
        if self.returns not in RETURNS:
            raise ValueError(f"unknown returns {self.returns!r}; choose one of: {', '.join(RETURNS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and logs."""
        return asdict(self)


@dataclass
class CurriculumConfig:
    """The curriculum of Section 7 and Table 3 of the paper.

    >>> CurriculumConfig(max_level=10, probabilities=(0.5, 0.25, 0.5))
    Traceback (most recent call last):
    ...
    ValueError: probabilities must sum to 1, not 1.25
    """

    max_level: int
    """The largest complexity, and the level at which C stops growing."""
    start_level: int = 1
    """The level C at the start of training, between 1 and ``max_level``."""
    threshold: float = 0.2
    """C goes up when the average zero-one error normalized by target length falls strictly below
    this value, in (0, 1] (the paper: 0.2; the authors' ForwardReverse run used 0.25)."""
    min_updates_between: int = 100
    """Refractory period: at least this many parameter updates separate two increases of C (the
    paper: 100). The count starts at construction, so the first increase waits as long."""
    probabilities: tuple[float, float, float] = (0.10, 0.25, 0.65)
    """Probabilities of the three branches of Table 3: uniform over all complexities, uniform over
    1 .. C + e, exactly C + e. Non-negative, summing to 1."""
    smoothing: float = 0.0
    """Decay s in [0, 1) of an exponential moving average of the error, which the rule then
    compares with the threshold: ``e <- s * e + (1 - s) * error``, reset to 1 after every
    increase. 0 (the paper) uses each update's error as it is; the authors' code used 0.8."""

    error: str = "batch"
    """Which error the rule compares with the threshold (:data:`CURRICULUM_ERRORS`):

    * ``"batch"`` (the paper's wording, and today's default): each example's zero-one errors over
      its target length, averaged over *every* example of the update's batch, the 10% drawn
      uniformly over all levels and those harder than C included;
    * ``"authors"`` (the authors' code, train_curriculum0): only the examples of the third branch
      (complexity exactly C + e) count, as their total errors over their total target symbols.
      Combine it with ``smoothing = 0.8`` to have the authors' rule whole (the ``authors``
      preset). An update with no such example leaves the error as it was.
    """

    def __post_init__(self) -> None:
        if self.error not in CURRICULUM_ERRORS:
            raise ValueError(f"unknown curriculum error {self.error!r}; choose one of: {', '.join(CURRICULUM_ERRORS)}")
        if self.max_level < 1:
            raise ValueError(f"max_level must be at least 1, not {self.max_level}")
        if not 1 <= self.start_level <= self.max_level:
            raise ValueError(f"start_level must be in [1, max_level = {self.max_level}], not {self.start_level}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], not {self.threshold}")
        if self.min_updates_between < 0:
            raise ValueError(f"min_updates_between must be at least 0, not {self.min_updates_between}")
        probabilities = tuple(float(p) for p in self.probabilities)
        if len(probabilities) != 3:
            raise ValueError(f"probabilities must have 3 entries (one per branch), not {len(probabilities)}")
        if any(not p >= 0.0 for p in probabilities):
            raise ValueError(f"probabilities must be non-negative, not {probabilities}")
        if not math.isclose(sum(probabilities), 1.0, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(f"probabilities must sum to 1, not {sum(probabilities):g}")
        self.probabilities = probabilities  # type: ignore[assignment]
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), not {self.smoothing}")


OPTIMIZERS = ("sgd", "adam")
"""Optimizer names."""


@dataclass
class OptimizerConfig:
    """How gradients become parameter updates.

    >>> OptimizerConfig(name="rmsprop")
    Traceback (most recent call last):
    ...
    ValueError: unknown optimizer 'rmsprop'; choose one of: sgd, adam
    """

    name: str = "sgd"
    """``"sgd"`` (with momentum, as in the paper) or ``"adam"``."""
    learning_rate: float = 0.05
    """Step size (the paper: 0.05)."""
    momentum: float = 0.9
    """SGD momentum (the paper: 0.9); unused by Adam."""
    clip_controller: float | None = 5.0
    """The gradient norm of the controller's parameters is clipped to this (the paper: 5; the
    authors' scripts: 2). ``None``: no clipping."""
    clip_baseline: float | None = 2.0
    """The same for the baseline LSTM's parameters (the paper: 2; the authors' scripts: 5)."""

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, not {self.learning_rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), not {self.momentum}")
        for name in ("clip_controller", "clip_baseline"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value}")


@dataclass
class EvaluationConfig:
    """Greedy evaluation on fresh instances, and what "solved" means.

    >>> EvaluationConfig(multipliers=(2, 5))
    Traceback (most recent call last):
    ...
    ValueError: multipliers must start with 1 (the training length), not (2, 5)
    """

    multipliers: tuple[int, ...] = (1, 2, 5, 10)
    """Test lengths, as multiples of the training length (the top curriculum complexity)."""
    instances: int = 1000
    """Fresh instances per test length in the final evaluation."""
    every: int = 50
    """Once the curriculum is at its top level, evaluate greedily at the training length every
    this many updates, to find out when the task is solved."""
    check_instances: int = 200
    """Instances of those periodic evaluations (the final one uses ``instances``)."""
    solved_accuracy: float = 0.99
    """"Solved": the curriculum is at its top level and the greedy exact-sequence accuracy at the
    training length is at least this."""
    select_on: tuple[int, ...] = ()
    """Model selection after solving: at the solving update and every ``every`` updates after it,
    evaluate greedily at these multiples of the training length (``check_instances`` instances,
    the same ones each time, seeded apart from the final evaluation's) and keep the parameters with
    the best mean exact accuracy, the earliest on ties, among those that still reach
    ``solved_accuracy`` at the training length on the final evaluation's instances (so the kept
    parameters never make a solved run's summary say unsolved). The final evaluation, ``rlntm-demo eval``
    and ``rlntm-demo trace`` then use the kept parameters. Empty: the last parameters. Lengths
    that are not reported as results keep the reported ones free of the selection."""

    def __post_init__(self) -> None:
        self.multipliers = tuple(int(m) for m in self.multipliers)
        self.select_on = tuple(int(m) for m in self.select_on)
        if any(m < 1 for m in self.select_on):
            raise ValueError(f"select_on must hold multiples of at least 1, not {self.select_on}")
        if not self.multipliers or self.multipliers[0] != 1 or any(m < 1 for m in self.multipliers):
            raise ValueError(f"multipliers must start with 1 (the training length), not {self.multipliers}")
        for name in ("instances", "every", "check_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 < self.solved_accuracy <= 1.0:
            raise ValueError(f"solved_accuracy must be in (0, 1], not {self.solved_accuracy}")


@dataclass
class TrainConfig:
    """Everything a training run depends on: equal configs and seeds give equal runs.

    >>> TrainConfig(task="copy", batch_size=10, rollouts_per_input=4)
    Traceback (most recent call last):
    ...
    ValueError: batch_size (10) must be a multiple of rollouts_per_input (4)
    """

    task: str = "copy"
    """The task (a name of :data:`~rlntm_demo.tasks.TASKS`)."""
    controller: str = "direct"
    """``"lstm"``, ``"direct"`` or ``"feedforward"``; overrides ``model.controller``."""
    preset: str = "custom"
    """The preset this config started from (recorded, not used)."""
    seed: int = 0
    """Seeds the weights, the instances and the sampled actions."""
    max_updates: int = 20_000
    """Stop after this many parameter updates (the paper: tasks are solved within 20,000 or never)."""
    batch_size: int = 200
    """Episodes per update (the paper: 200; the authors' scripts: 300)."""
    rollouts_per_input: int = 1
    """Rollouts of each input in a batch; with 2 or more, each rollout's advantage is reduced by
    the leave-one-out mean of the others' (:func:`~rlntm_demo.objective.leave_one_out`)."""
    num_symbols: int | None = None
    """Data symbols the inputs are drawn from; ``None``: the task's default (30, or base 3 for
    addition)."""
    memory: bool | None = None
    """``None`` (the paper): the memory tape exists where the task's row of Table 2 gives one
    (:attr:`Task.interfaces <rlntm_demo.tasks.Task.interfaces>`). ``True``: a memory tape whatever
    the task, as in the authors' code, which always had one (the ``authors`` preset); ``False``:
    none."""
    repeat_schedule: str | None = None
    """RepeatCopy tasks only: how the complexity sets m (:class:`~rlntm_demo.tasks.RepeatCopy`):
    ``None`` or ``"mixed"`` (m drawn at every level), or ``"two-then-three"`` (the authors' order:
    every length with m = 2, then with m = 3; set ``curriculum.max_level`` to twice the phrase
    length, as the ``authors`` preset does)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model; ``controller`` and ``interfaces`` are taken from this config and the task
    (:attr:`interfaces`)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Returns (reward-to-go by default)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and gradient clipping."""
    curriculum: CurriculumConfig = field(default_factory=lambda: CurriculumConfig(max_level=20))
    """The curriculum; ``max_level`` is the training length (presets take it from the task)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Greedy evaluation and the "solved" criterion."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many updates (and always at the end, on Ctrl-C, on solving)."""
    stop_when_solved: bool = True
    """End the run once the task is solved (and ``updates_after_solved`` more updates are made)."""
    updates_after_solved: int = 0
    """With ``stop_when_solved``, the updates made after the solving one before the run ends. A
    policy stopped at the first update that passes the training length often fails at 5 times it;
    training on sharpens it (``updates_to_solve`` still records the solving update)."""
    tensorboard: bool = False
    """Also log the metrics to TensorBoard (needs the ``tensorboard`` package)."""

    def __post_init__(self) -> None:
        from .tasks import TASKS  # tasks imports this module's symbols

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {self.controller!r}; choose one of: {', '.join(CONTROLLERS)}")
        for name in ("max_updates", "batch_size", "rollouts_per_input", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.updates_after_solved < 0:
            raise ValueError(f"updates_after_solved must be at least 0, not {self.updates_after_solved}")
        if self.batch_size % self.rollouts_per_input:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of rollouts_per_input ({self.rollouts_per_input})"
            )
        if self.repeat_schedule is not None and not self.task.startswith("repeat-copy"):
            raise ValueError(f"repeat_schedule applies to the RepeatCopy tasks only, not {self.task!r}")
        if self.num_symbols is not None or self.repeat_schedule is not None:
            self.task_instance()  # the task validates them
        if self.model.controller != self.controller or self.model.interfaces != self.interfaces:
            self.model = dataclasses.replace(self.model, controller=self.controller, interfaces=self.interfaces)

    @property
    def interfaces(self) -> InterfaceSpec:
        """The tapes of the run: the task's (Table 2), with the memory tape added or removed as
        :attr:`memory` says."""
        from .tasks import TASKS

        spec = TASKS[self.task].interfaces
        return spec if self.memory is None else dataclasses.replace(spec, memory=self.memory)

    @property
    def inputs_per_update(self) -> int:
        """Distinct inputs per update: ``batch_size // rollouts_per_input``."""
        return self.batch_size // self.rollouts_per_input

    def task_instance(self) -> Any:
        """The :class:`~rlntm_demo.tasks.Task` this config trains on."""
        from .tasks import TASKS

        options: dict[str, Any] = {} if self.num_symbols is None else {"num_symbols": self.num_symbols}
        if self.repeat_schedule is not None:
            options["schedule"] = self.repeat_schedule
        return TASKS[self.task](**options)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values (JSON-ready; also what checkpoints store)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
