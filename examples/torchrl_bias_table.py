"""How far are torchrl's ReinforceLoss, A2CLoss and ClipPPOLoss from the gradient of the objective they claim?

Checks torchrl's own loss modules, float32 as torchrl builds them, with
:func:`reinforce_check.integrations.torchrl.check_torchrl`: one rollout of ``max_steps = 4`` steps of
:class:`ChainWalk` through torchrl's ``GymWrapper``, which is one whole episode (4 steps, 2 actions,
16 action sequences), and the loss module's ``forward`` on it (its value estimator computes the
advantages). For each setting it prints whether the expected gradient of the loss equals minus the
gradient of the objective, and the exact size of the departure, ``‖E[grad loss] + grad J‖ / ‖grad J‖``,
at two policies: the networks as torchrl's ``MLP`` initializes them, and the same networks after 30
updates of A2C (gamma=1, lambda=1), actor and critic (the actor then moves right with probability
0.81 to 0.99 along its most likely path), loaded into every loss. The objective is the
undiscounted return ("return") or the return discounted by the value estimator's gamma from the
episode's start ("discounted"), divided by the samples the loss averages over (the rollout's steps),
plus ``entropy_coeff`` times the entropy at the visited states when the loss has an entropy bonus
("+H"), plus the critic's value of the state where a rollout stops inside its episode, held fixed,
when asked (``bootstrap=True``: "+V").

Run it with ``python examples/torchrl_bias_table.py`` (``pip install -e ".[integrations]"``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from chain_walk import ChainWalk  # examples/chain_walk.py, beside this script
from tensordict.nn import TensorDictModule
from torchrl.envs import GymWrapper
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, OneHotCategorical, ProbabilisticActor, ValueOperator
from torchrl.objectives import A2CLoss, ClipPPOLoss, ReinforceLoss, ValueEstimators
from torchrl.objectives.value import GAE

from reinforce_check.integrations import relative_bias
from reinforce_check.integrations.torchrl import check_torchrl

HORIZON = 4
HIDDEN = 16
UNBIASED_VALUES = {"gamma": 1.0, "lmbda": 1.0}


@dataclass(frozen=True)
class Row:
    """One line of the table: a loss, its settings, its value estimator, the objective it is held to."""

    label: str
    loss: type
    settings: dict[str, Any] = field(default_factory=dict)
    estimator: tuple[ValueEstimators, dict[str, Any]] | None = (ValueEstimators.GAE, UNBIASED_VALUES)
    objective: str = "return"
    max_steps: int = HORIZON
    bootstrap: bool = False
    tutorial_gae: bool = False


NO_BONUS = {"entropy_bonus": False}
ROWS = [
    Row("ReinforceLoss unbiased: gamma=1, lmbda=1", ReinforceLoss),
    Row("ReinforceLoss defaults", ReinforceLoss, estimator=None, objective="discounted"),
    Row("ReinforceLoss defaults", ReinforceLoss, estimator=None),
    Row("A2CLoss unbiased: no entropy bonus", A2CLoss, NO_BONUS),
    Row("A2CLoss defaults", A2CLoss, estimator=None, objective="discounted"),
    Row("A2CLoss defaults", A2CLoss, estimator=None),
    Row("A2CLoss unbiased but entropy_coeff=0.01", A2CLoss),
    Row("ClipPPOLoss unbiased", ClipPPOLoss, NO_BONUS),
    Row("ClipPPOLoss defaults", ClipPPOLoss, estimator=None, objective="discounted"),
    Row("ClipPPOLoss defaults", ClipPPOLoss, estimator=None),
    Row(
        "ClipPPOLoss unbiased but gamma=0.99",
        ClipPPOLoss,
        NO_BONUS,
        (ValueEstimators.GAE, {"gamma": 0.99, "lmbda": 1.0}),
        "discounted",
    ),
    Row(
        "ClipPPOLoss unbiased but lmbda=0.95",
        ClipPPOLoss,
        NO_BONUS,
        (ValueEstimators.GAE, {"gamma": 1.0, "lmbda": 0.95}),
    ),
    Row("ClipPPOLoss unbiased but TD(0)", ClipPPOLoss, NO_BONUS, (ValueEstimators.TD0, {"gamma": 1.0})),
    Row("ClipPPOLoss unbiased but normalize_advantage", ClipPPOLoss, {**NO_BONUS, "normalize_advantage": True}),
    Row("ClipPPOLoss unbiased, GAE(average_gae=True)", ClipPPOLoss, NO_BONUS, tutorial_gae=True),
    Row("ClipPPOLoss unbiased, 3 of 4 steps: bootstraps", ClipPPOLoss, NO_BONUS, max_steps=HORIZON - 1),
    Row("ClipPPOLoss unbiased, 3 of 4 steps: bootstraps", ClipPPOLoss, NO_BONUS, max_steps=HORIZON - 1, bootstrap=True),
]


def networks(seed: int = 0) -> tuple[ProbabilisticActor, ValueOperator]:
    """An actor (one-hot categorical over ChainWalk's 2 actions) and a critic, float32 MLPs."""
    torch.manual_seed(seed)
    spec = GymWrapper(ChainWalk(HORIZON)).action_spec
    logits = TensorDictModule(
        MLP(in_features=HORIZON + 1, out_features=2, num_cells=[HIDDEN]), in_keys=["observation"], out_keys=["logits"]
    )
    actor = ProbabilisticActor(
        logits, in_keys=["logits"], distribution_class=OneHotCategorical, return_log_prob=True, spec=spec
    )
    critic = ValueOperator(MLP(in_features=HORIZON + 1, out_features=1, num_cells=[HIDDEN]), in_keys=["observation"])
    return actor, critic


def trained_networks(updates: int = 30) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The networks after ``updates`` A2C updates (gamma=1, lambda=1), one whole episode each.

    30 updates leave the actor sure but not certain: it moves right with probability 0.81 to 0.99
    along its most likely path (after 150 it would be 0.9994 and more, with a gradient a
    thousandth of the initial one).
    """
    actor, critic = networks()
    loss = A2CLoss(actor, critic, entropy_bonus=False)
    loss.make_value_estimator(ValueEstimators.GAE, **UNBIASED_VALUES)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.02)
    env = GymWrapper(ChainWalk(HORIZON))
    env.set_seed(0)
    for _ in range(updates):
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            rollout = env.rollout(HORIZON, actor)
        terms = loss(rollout)
        optimizer.zero_grad()
        (terms["loss_objective"] + terms["loss_critic"]).backward()
        optimizer.step()
    return actor.state_dict(), critic.state_dict()


def build(row: Row, state: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None) -> tuple[Any, Any]:
    """The row's loss module, on fresh networks (loaded with ``state``), and its value estimator."""
    actor, critic = networks()
    if state is not None:
        actor.load_state_dict(state[0])
        critic.load_state_dict(state[1])
    loss = row.loss(actor, critic, **row.settings)
    if row.estimator is not None:
        kind, hyperparameters = row.estimator
        loss.make_value_estimator(kind, **hyperparameters)
    advantage = GAE(value_network=critic, average_gae=True, **UNBIASED_VALUES) if row.tutorial_gae else None
    return loss, advantage


def main() -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    try:
        states: dict[str, Callable[[], Any]] = {"initial": lambda: None, "trained": trained_networks}
        policies = {name: make() for name, make in states.items()}
        env = GymWrapper(ChainWalk(HORIZON))
        results: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        header = f"{'setting':<48} {'objective':<12} {'policy':<8} {'passes':<6} {'‖bias‖/‖grad J‖':>16} {'seconds':>8}"
        print(header)
        print("-" * len(header))
        for row in ROWS:
            figures: dict[str, dict[str, Any]] = {}
            for policy, state in policies.items():
                loss, advantage = build(row, state)
                start = time.perf_counter()
                report = check_torchrl(
                    loss,
                    env,
                    max_steps=row.max_steps,
                    objective=row.objective,  # type: ignore[arg-type]
                    bootstrap=row.bootstrap,
                    advantage=advantage,
                    raise_exception=False,
                    top_sequences=0,
                )
                seconds = time.perf_counter() - start
                figures[policy] = {
                    "ok": report.ok,
                    "relative_bias": relative_bias(report),
                    "num_sequences": report.num_sequences,
                    "ground_truth": report.ground_truth,
                    "seconds": seconds,
                }
                claimed = (
                    row.objective
                    + ("+H" if getattr(loss, "entropy_bonus", False) else "")
                    + ("+V" if row.bootstrap else "")
                )
                print(
                    f"{row.label:<48} {claimed:<12} {policy:<8} {'yes' if report.ok else 'no':<6} "
                    f"{figures[policy]['relative_bias']:>16.3g} {seconds:>8.2f}"
                )
            results[(row.label, claimed)] = figures
        sequences = {f["num_sequences"] for figures in results.values() for f in figures.values()}
        print(f"\nthe checks enumerated {', '.join(map(str, sorted(sequences)))} action sequences")
        return results
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
