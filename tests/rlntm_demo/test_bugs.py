"""The deliberate bugs (:mod:`rlntm_demo.bugs`): each replaces one function of production code.

That the exact check catches each of them is pinned in ``test_check.py``; here, what each
variant changes, and that it changes nothing else.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlntm_demo.bugs import BUGS
from rlntm_demo.config import ModelConfig, ObjectiveConfig
from rlntm_demo.model import RLNTM
from rlntm_demo.objective import LossTerms, episode_losses
from rlntm_demo.presets import config_from_dict, make_config
from rlntm_demo.tasks import make_task

from .test_objective import MASK, REWARDS, hand_rollout

def changed_terms(name: str) -> set[str]:
    production = LossTerms()
    return {f.name for f in dataclasses.fields(LossTerms) if getattr(BUGS[name].terms, f.name) is not getattr(production, f.name)}


def overridden_methods(name: str) -> set[str]:
    return {key for key in vars(BUGS[name].model) if not key.startswith("__")}


@pytest.mark.parametrize("name,term", [("reward-to-go-off-by-one", "returns"), ("missing-pathwise-term", "pathwise"),
                                       ("baseline-not-detached", "advantages")])
def test_a_loss_bug_replaces_one_term_and_keeps_the_production_model(name: str, term: str) -> None:
    assert changed_terms(name) == {term}
    assert BUGS[name].model is RLNTM and BUGS[name].returns == "reward-to-go"


@pytest.mark.parametrize("name,method", [("baseline-sees-current-action", "baseline_decisions"),
                                         ("baseline-leaks-into-controller", "baseline_reads")])
def test_a_model_bug_overrides_one_method_and_keeps_the_production_loss(name: str, method: str) -> None:
    assert issubclass(BUGS[name].model, RLNTM) and BUGS[name].model is not RLNTM
    assert overridden_methods(name) == {"fuses_baseline", method}
    assert changed_terms(name) == set()


def test_the_whole_return_is_the_production_total_returns_option() -> None:
    bug = BUGS["total-return-with-baseline"]
    assert bug.returns == "total" and bug.model is RLNTM and changed_terms(bug.name) == set()


def test_reward_to_go_off_by_one_leaves_out_the_steps_own_reward() -> None:
    shifted = BUGS["reward-to-go-off-by-one"].terms.returns(REWARDS, MASK, ObjectiveConfig())
    assert shifted.tolist() == [[-2.5, -2.5, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]]


def test_loss_bugs_train_the_baseline_by_reinforce_or_drop_the_pathwise_term() -> None:
    baselines = (torch.full((2, 4), -1.0) * MASK).requires_grad_()
    losses = episode_losses(hand_rollout(baselines), terms=BUGS["baseline-not-detached"].terms)
    losses.policy.sum().backward()
    assert baselines.grad is not None and bool(baselines.grad.abs().sum() > 0)  # REINFORCE trains the baseline
    missing = episode_losses(hand_rollout(baselines.detach()), terms=BUGS["missing-pathwise-term"].terms)
    assert missing.pathwise.tolist() == [0.0, 0.0]
    assert episode_losses(hand_rollout(baselines.detach())).pathwise.tolist() == [3.5, 4.0]


def build(name: str | None) -> tuple[RLNTM, object]:
    task = make_task("forward-reverse", num_symbols=4)
    batch = task.sample(complexity=3, batch_size=6, generator=torch.Generator().manual_seed(0))
    config = ModelConfig(controller="direct", hidden_size=8, embedding_size=4, interfaces=task.interfaces,
                         init_std=0.5, inverse_temperature=1.0)
    cls = RLNTM if name is None else BUGS[name].model
    return cls(config, generator=torch.Generator().manual_seed(0)), batch


def test_a_leaking_baseline_trains_the_controller_and_the_production_one_does_not() -> None:
    for name, leaks in ((None, False), ("baseline-leaks-into-controller", True)):
        model, batch = build(name)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            episode_losses(model.run_episode(batch)).baseline.sum().backward()  # type: ignore[arg-type]
        reached = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.policy_parameters().values())
        assert reached == leaks, name


def test_a_baseline_that_sees_the_current_action_is_told_the_steps_own_decisions() -> None:
    production, _ = build(None)
    buggy, _ = build("baseline-sees-current-action")
    chosen = torch.randint(0, 3, (2, 5, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(buggy.baseline_decisions(chosen), chosen)
    assert torch.equal(production.baseline_decisions(chosen)[:, 1:], chosen[:, :-1])


def test_checkpoints_that_recorded_no_bug_still_load() -> None:
    data = make_config("copy", "direct", "fast").to_dict()
    assert "bug" not in data["model"] and "bug" not in data["objective"]
    data["model"]["bug"] = data["objective"]["bug"] = None
    assert config_from_dict(data) == make_config("copy", "direct", "fast")
    data["model"]["bug"] = "baseline-leaks-into-controller"
    with pytest.raises(ValueError, match="unknown setting 'model.bug'"):
        config_from_dict(data)
