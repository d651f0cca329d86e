"""Deliberate bugs, for the exact check to catch: each one a named variant of the production code.

A bug replaces one function and leaves everything else as it is: a loss bug is
:class:`~rlntm_demo.objective.LossTerms` with one term replaced, a model bug a subclass of
:class:`~rlntm_demo.model.RLNTM` that overrides one of the methods through which its baseline
LSTM reads the episode (:meth:`~rlntm_demo.model.RLNTM.baseline_decisions`,
:meth:`~rlntm_demo.model.RLNTM.baseline_reads`). The production code has no branch for any of
them; :func:`rlntm_demo.check.check_model` and ``rlntm-demo check --bug NAME`` build the variant
named in :data:`BUGS`.

==================================  ==========================================================
``reward-to-go-off-by-one``         R_{t+1} in place of R_t: biased (policy check fails)
``missing-pathwise-term``           no backpropagation into predictions and writes: biased
``baseline-leaks-into-controller``  the baseline reads the controller's inputs undetached, so
                                    its regression loss trains the controller: policy check fails
``baseline-sees-current-action``    the baseline is fed the step's own actions: biased
``baseline-not-detached``           ``R_t - b_t`` not detached in the surrogate, so REINFORCE
                                    trains the baseline: baseline check fails
``total-return-with-baseline``      the whole return R_1 at every step, with the baselines:
                                    **unbiased** (the check passes), only noisier, because the
                                    rewards before step t do not depend on the actions of step
                                    t, and the baseline does not either
==================================  ==========================================================

>>> sorted(BUGS)[:2]
['baseline-leaks-into-controller', 'baseline-not-detached']
>>> BUGS["missing-pathwise-term"].terms.pathwise is LossTerms().pathwise
False
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ObjectiveConfig
from .model import RLNTM
from .objective import LossTerms
from .objective import returns as production_returns

__all__ = ["BUGS", "Bug"]


@dataclass(frozen=True)
class Bug:
    """A deliberate bug: the model class and the loss's terms to use instead of production's."""

    name: str
    """The name ``--bug`` takes."""
    summary: str
    """What is wrong, and what the check says about it."""
    model: type[RLNTM] = RLNTM
    """The model class (:class:`~rlntm_demo.model.RLNTM` where the bug is in the loss)."""
    terms: LossTerms = field(default_factory=LossTerms)
    """The loss's functions (production's where the bug is in the model)."""
    returns: str = "reward-to-go"
    """The returns of the objective (:attr:`~rlntm_demo.config.ObjectiveConfig.returns`)."""


def _reward_to_go_off_by_one(rewards: torch.Tensor, mask: torch.Tensor, config: ObjectiveConfig) -> torch.Tensor:
    """``R_{t+1}`` in place of ``R_t``: the step's own reward is left out, although that step's
    output decision caused it."""
    to_go = production_returns(rewards, mask, config)
    return torch.cat([to_go[:, 1:], torch.zeros_like(to_go[:, :1])], 1) * mask


def _no_pathwise(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Nothing: the predictions and the memory writes get no gradient."""
    return rewards.new_zeros(rewards.shape[0])


def _advantages_not_detached(returns: torch.Tensor, baselines: torch.Tensor) -> torch.Tensor:
    """``R_t - b_t`` with only ``R_t`` detached: the surrogate trains the baseline."""
    return returns.detach() - baselines


class _BaselineSeesCurrentAction(RLNTM):
    """The baseline LSTM is told each step's own decisions instead of the previous ones."""

    fuses_baseline = False

    def baseline_decisions(self, chosen: torch.Tensor) -> torch.Tensor:
        return chosen


class _BaselineLeaksIntoController(RLNTM):
    """The baseline LSTM reads the controller's inputs with their gradient: its regression loss
    trains the controller's embeddings and memory."""

    fuses_baseline = False

    def baseline_reads(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


BUGS: dict[str, Bug] = {
    bug.name: bug
    for bug in (
        Bug("reward-to-go-off-by-one", "R_{t+1} in place of R_t: biased",
            terms=LossTerms(returns=_reward_to_go_off_by_one)),
        Bug("missing-pathwise-term", "no backpropagation into the predictions and the writes: biased",
            terms=LossTerms(pathwise=_no_pathwise)),
        Bug("baseline-leaks-into-controller", "the baseline's loss trains the controller: the policy check fails",
            model=_BaselineLeaksIntoController),
        Bug("baseline-sees-current-action", "the baseline is fed the step's own actions: biased",
            model=_BaselineSeesCurrentAction),
        Bug("baseline-not-detached", "REINFORCE trains the baseline: the baseline check fails",
            terms=LossTerms(advantages=_advantages_not_detached)),
        Bug("total-return-with-baseline", "the whole return at every step, with the baselines: unbiased, noisier",
            returns="total"),
    )
}
"""The deliberate bugs by name, in the order of the table above."""
