"""Configuration dataclasses of the RL-NTM demo, one docstring per field.

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

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BLANK",
    "CONTROLLERS",
    "EOS",
    "FIRST_DATA_SYMBOL",
    "BASELINES",
    "InterfaceSpec",
    "MODEL_BUGS",
    "ModelConfig",
    "NUM_DATA_SYMBOLS",
    "NUM_SYMBOLS",
    "OBJECTIVE_BUGS",
    "ObjectiveConfig",
    "PLUS",
    "REPEAT_2",
    "REPEAT_3",
    "RETURNS",
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
RETURNS = ("reward-to-go", "total")
"""What multiplies the score of the actions of step t: R_t = sum_{s>=t} r_s, or the episode's total."""
MODEL_BUGS = ("baseline-leaks-into-controller", "baseline-sees-current-action")
"""Deliberate bugs in the model, for the tests of the exact check only."""
OBJECTIVE_BUGS = ("reward-to-go-off-by-one", "missing-pathwise-term", "baseline-not-detached")
"""Deliberate bugs in the loss, for the tests of the exact check only."""


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
    bug: str | None = None
    """A deliberate bug, only for the tests of the exact check (see ``MODEL_BUGS``). Never set it."""

    def __post_init__(self) -> None:
        if self.controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {self.controller!r}; choose one of: {', '.join(CONTROLLERS)}")
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of: {', '.join(BASELINES)}")
        if self.bug is not None and self.bug not in MODEL_BUGS:
            raise ValueError(f"unknown model bug {self.bug!r}; choose one of: {', '.join(MODEL_BUGS)}")
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
        if not math.isfinite(self.initial_state):
            raise ValueError(f"initial_state must be finite, not {self.initial_state}")
        if not 0.0 <= self.online_decay < 1.0:
            raise ValueError(f"online_decay must be in [0, 1), not {self.online_decay}")

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
    entropy_bonus_at_top: float | None = None
    """The entropy bonus once the curriculum is at its top level (``None``: ``entropy_bonus``
    throughout). The ``fast`` preset sets 0: the bonus explores while the instances grow, then
    the policy may sharpen, which is what greedy decoding needs."""
    bug: str | None = None
    """A deliberate bug, only for the tests of the exact check (see ``OBJECTIVE_BUGS``). Never set it."""

    def __post_init__(self) -> None:
        if not (isinstance(self.entropy_bonus, (int, float)) and self.entropy_bonus >= 0):
            raise ValueError(f"entropy_bonus must be a number >= 0, not {self.entropy_bonus}")
        if self.entropy_bonus_at_top is not None and not self.entropy_bonus_at_top >= 0:
            raise ValueError(f"entropy_bonus_at_top must be a number >= 0 or null, not {self.entropy_bonus_at_top}")
        if self.returns not in RETURNS:
            raise ValueError(f"unknown returns {self.returns!r}; choose one of: {', '.join(RETURNS)}")
        if self.bug is not None and self.bug not in OBJECTIVE_BUGS:
            raise ValueError(f"unknown objective bug {self.bug!r}; choose one of: {', '.join(OBJECTIVE_BUGS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and logs."""
        return asdict(self)
