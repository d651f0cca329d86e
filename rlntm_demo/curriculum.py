"""The curriculum of Section 7: which complexities to train on, and when to make them harder.

The complexity of an instance is the length of the sequence to process (see
:mod:`rlntm_demo.tasks`). Training keeps a *level* C, 1 <= C <= ``max_level``, and draws the
complexity d of each example from the distribution of Table 3 of the paper:

===========  ==============================================
probability  complexity d
===========  ==============================================
10%          uniform over all complexities 1 .. max_level
25%          uniform over 1 .. min(C + e, max_level)
65%          min(C + e, max_level)
===========  ==============================================

where e is geometric with success probability 1/2: P(e = k) = 2^-(k+1) for k = 0, 1, 2, ...
(the paper's table writes "d = D + e", a typo for C + e). Each example draws its own branch and
its own e. The first branch keeps some mass on the hardest complexities at every level, which the
paper found critical.

C goes up by one whenever the average zero-one loss normalized by target length falls below a
threshold (0.2), with a refractory period of at least 100 parameter updates between increases,
until C reaches ``max_level``.

The authors' code draws the branches one after the other (1/10 uniform over all, then 1/4 of the
rest uniform, the remainder C + e), that is 10 / 22.5 / 67.5%; pass
``probabilities=(0.1, 0.225, 0.675)`` to reproduce it.

>>> curriculum = Curriculum(CurriculumConfig(max_level=3))
>>> [round(p, 4) for p in curriculum.distribution().tolist()]
[0.5354, 0.2479, 0.2167]
>>> curriculum.sample(4, torch.Generator().manual_seed(0)).tolist()
[3, 2, 1, 3]
>>> curriculum.update(0.1), curriculum.level  # a low error, but the refractory period runs
(False, 1)
"""

from __future__ import annotations

from typing import Any

import torch

from .config import CurriculumConfig

__all__ = ["Curriculum", "CurriculumConfig", "curriculum_error"]


def curriculum_error(errors: torch.Tensor, target_len: torch.Tensor, exact_branch: torch.Tensor,
                     config: CurriculumConfig) -> float | None:
    """The error the curriculum's rule reads, from each example's number of wrong targets.

    Arguments:
        errors: (B,) the zero-one errors of each example (wrong or missing targets).
        target_len: (B,) their target lengths.
        exact_branch: (B,) bool, the examples drawn at exactly C + e (the third branch).
        config: ``config.error`` says which rule: ``"batch"``, the mean over every example of
            errors / target length (each capped at 1); ``"authors"``, the third branch's total
            errors over its total target symbols (``None`` if the batch has no such example).

    >>> errors, lengths = torch.tensor([0, 3, 1]), torch.tensor([4, 3, 2])
    >>> curriculum_error(errors, lengths, torch.tensor([True, False, True]), CurriculumConfig(max_level=3))
    0.5
    >>> curriculum_error(errors, lengths, torch.tensor([True, False, True]), CurriculumConfig(max_level=3, error="authors"))
    0.16666666666666666
    """
    if config.error == "batch":
        # In the errors' own dtype (float where training passes its loss's dtype).
        errors = errors if errors.is_floating_point() else errors.to(torch.float64)
        return float((errors / target_len).clamp(max=1.0).mean())
    if not bool(exact_branch.any()):
        return None
    wrong = float(errors[exact_branch].sum())
    symbols = float(target_len[exact_branch].sum())
    return min(wrong, symbols) / symbols


class Curriculum:
    """The level C, the distribution over complexities it indexes, and the rule that raises it.

    Args:
        config: The curriculum's settings.

    >>> curriculum = Curriculum(CurriculumConfig(max_level=5, min_updates_between=2))
    >>> [curriculum.update(0.1) for _ in range(5)], curriculum.level
    ([False, True, False, True, False], 3)
    """

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config
        self._level = config.start_level
        self._updates_since_increase = 0
        self._smoothed_error = 1.0

    @property
    def level(self) -> int:
        """The current level C."""
        return self._level

    @property
    def smoothed_error(self) -> float:
        """The error the rule compared with the threshold at the last update (1 before any)."""
        return self._smoothed_error

    @property
    def at_top(self) -> bool:
        """Whether C has reached ``max_level``."""
        return self._level == self.config.max_level

    def _capped_target_probabilities(self) -> torch.Tensor:
        """P(min(C + e, max_level) = j) for j = 1 .. max_level, in float64."""
        max_level, level = self.config.max_level, self._level
        probs = torch.zeros(max_level, dtype=torch.float64)
        for j in range(level, max_level):
            probs[j - 1] = 0.5 ** (j - level + 1)
        probs[max_level - 1] = 0.5 ** (max_level - level)  # the whole tail e >= max_level - C
        return probs

    def distribution(self) -> torch.Tensor:
        """The exact probability of each complexity 1 .. max_level under the current level.

        Returns:
            A float64 tensor of shape ``(max_level,)`` whose entry ``d - 1`` is P(complexity = d);
            it sums to 1.

        >>> Curriculum(CurriculumConfig(max_level=2, start_level=2)).distribution().tolist()
        [0.175, 0.825]
        """
        p_all, p_below, p_exact = self.config.probabilities
        max_level = self.config.max_level
        target = self._capped_target_probabilities()
        ranks = torch.arange(1, max_level + 1, dtype=torch.float64)
        # Uniform over 1 .. j puts target[j] / j on each d <= j: a reversed cumulative sum.
        below = (target / ranks).flip(0).cumsum(0).flip(0)
        return p_all / max_level + p_below * below + p_exact * target

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Draws the complexities of a batch (see :meth:`sample_with_branches`, whose first
        result this is)."""
        return self.sample_with_branches(batch_size, generator)[0]

    def sample_with_branches(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws the complexities of a batch from the distribution of Table 3.

        Only ``generator`` is used, never torch's global random state, so the draws are a function
        of the generator's seed.

        Args:
            batch_size: How many complexities to draw.
            generator: The (CPU) source of randomness.

        Returns:
            The complexities, a long tensor of shape ``(batch_size,)`` with entries in
            1 .. max_level, and which of them came from the third branch (exactly C + e), a bool
            tensor of the same shape: the examples the authors' error counts
            (``CurriculumConfig.error = "authors"``).

        >>> Curriculum(CurriculumConfig(max_level=1)).sample(3, torch.Generator().manual_seed(1)).tolist()
        [1, 1, 1]
        """
        max_level, level = self.config.max_level, self._level
        p_all, p_below, _ = self.config.probabilities
        # e = floor(-log2 u) with u uniform in (0, 1] is geometric: P(e = k) = 2^-(k+1).
        u = 1.0 - torch.rand(batch_size, generator=generator, dtype=torch.float64)
        e = torch.floor(-torch.log2(u)).clamp(max=max_level - level)
        target = level + e.long()
        branch = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        spread = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        uniform_all = 1 + torch.floor(spread * max_level).long().clamp(max=max_level - 1)
        uniform_below = 1 + torch.minimum(torch.floor(spread * target).long(), target - 1)
        complexities = torch.where(branch < p_all, uniform_all, torch.where(branch < p_all + p_below, uniform_below, target))
        return complexities, branch >= p_all + p_below

    def update(self, error_rate: float | None) -> bool:
        """Counts one parameter update and raises C by one if the paper's rule allows it.

        C increases when ``error_rate`` is strictly below ``config.threshold``, at least
        ``config.min_updates_between`` updates (this one included) have been counted since the last
        increase (or since construction), and C is below ``max_level``.

        Args:
            error_rate: This update's error (``CurriculumConfig.error`` says which: by default the
                average zero-one error normalized by target length over *all* the examples of its
                batch, as in the paper; with ``"authors"`` only the examples of the third branch,
                as total errors over total target symbols, see :func:`curriculum_error`), smoothed
                here with decay ``config.smoothing``. ``None`` (no example counted): the update
                is counted and the smoothed error stays as it was.

        Returns:
            Whether C increased.

        Raises:
            ValueError: If ``error_rate`` is not a number in [0, 1].
        """
        if error_rate is not None and not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], not {error_rate}")
        self._updates_since_increase += 1
        s = self.config.smoothing
        if error_rate is not None:
            self._smoothed_error = s * self._smoothed_error + (1.0 - s) * float(error_rate)
        if (
            self._smoothed_error < self.config.threshold
            and self._updates_since_increase >= self.config.min_updates_between
            and self._level < self.config.max_level
        ):
            self._level += 1
            self._updates_since_increase = 0
            self._smoothed_error = 1.0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The mutable state, as plain ints (loadable with ``torch.load(weights_only=True)``).

        >>> Curriculum(CurriculumConfig(max_level=4, start_level=2)).state_dict()
        {'level': 2, 'updates_since_increase': 0, 'max_level': 4, 'smoothed_error': 1.0}
        """
        return {
            "level": int(self._level),
            "updates_since_increase": int(self._updates_since_increase),
            "max_level": int(self.config.max_level),
            "smoothed_error": float(self._smoothed_error),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the state saved by :meth:`state_dict`.

        Args:
            state: A dict from :meth:`state_dict`.

        Raises:
            ValueError: If the state was saved under another ``max_level`` or is out of range.
        """
        if int(state["max_level"]) != self.config.max_level:
            raise ValueError(
                f"state was saved with max_level = {state['max_level']}, but this curriculum has "
                f"max_level = {self.config.max_level}"
            )
        level, updates = int(state["level"]), int(state["updates_since_increase"])
        if not 1 <= level <= self.config.max_level:
            raise ValueError(f"level must be in [1, {self.config.max_level}], not {level}")
        if updates < 0:
            raise ValueError(f"updates_since_increase must be at least 0, not {updates}")
        smoothed = float(state.get("smoothed_error", 1.0))
        if not 0.0 <= smoothed <= 1.0:
            raise ValueError(f"smoothed_error must be in [0, 1], not {smoothed}")
        self._level, self._updates_since_increase, self._smoothed_error = level, updates, smoothed
