"""How far is Stable-Baselines3's first gradient step from the gradient of the objective it claims?

Checks SB3's own A2C and PPO, float32 as SB3 builds them, with
:func:`reinforce_check.integrations.sb3.check_sb3`: one rollout of ``n_steps = 4`` steps, which is one
whole episode of :class:`ChainWalk` (4 steps, 2 actions, 16 action sequences), and SB3's own
``train()`` up to its first ``loss.backward()``. For each setting it prints whether the expected
gradient of SB3's loss equals minus the gradient of the objective, and the exact size of the
departure, ``‖E[grad loss] + grad J‖ / ‖grad J‖``, at two policies: SB3's initialization (its action
head is nearly uniform) and a policy trained for 200 steps with A2C (the same weights loaded into
every model). The objective is the undiscounted return ("return") or the return discounted by the
model's gamma from the episode's start ("discounted"), divided by the 4 samples SB3's loss averages
over, plus ``ent_coef`` times the entropy at the visited states when ``ent_coef`` is not 0 ("+H").

Run it with ``python examples/sb3_bias_table.py`` (``pip install -e ".[integrations]"``); it takes
about half a minute on a CPU.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from chain_walk import ChainWalk  # examples/chain_walk.py, beside this script
from stable_baselines3 import A2C, PPO

from reinforce_check.integrations import relative_bias
from reinforce_check.integrations.sb3 import check_sb3

HORIZON = 4
TOLERANCE = {"rtol": 1e-5, "atol": 1e-8}  # what SB3's float32 rollout buffer resolves


@dataclass(frozen=True)
class Row:
    """One line of the table: an algorithm, its settings, the objective it is held to."""

    label: str
    algorithm: type
    settings: dict[str, Any]
    objective: str = "return"
    minibatches: str = "first"


UNBIASED = {"gamma": 1.0, "gae_lambda": 1.0, "normalize_advantage": False, "ent_coef": 0.0}
ROWS = [
    Row("A2C unbiased: gamma=1", A2C, {"gamma": 1.0}),
    Row("A2C defaults (gamma=0.99)", A2C, {}, "discounted"),
    Row("A2C defaults (gamma=0.99)", A2C, {}, "return"),
    Row("A2C gamma=1, ent_coef=0.01", A2C, {"gamma": 1.0, "ent_coef": 0.01}),
    Row("A2C gamma=1, ent_coef=0.1", A2C, {"gamma": 1.0, "ent_coef": 0.1}),
    Row("A2C gamma=1, normalize_advantage", A2C, {"gamma": 1.0, "normalize_advantage": True}),
    Row("PPO unbiased", PPO, dict(UNBIASED)),
    Row("PPO defaults", PPO, {}, "discounted"),
    Row("PPO defaults", PPO, {}, "return"),
    Row("PPO unbiased but gae_lambda=0.95", PPO, {**UNBIASED, "gae_lambda": 0.95}),
    Row("PPO unbiased but normalize_advantage", PPO, {**UNBIASED, "normalize_advantage": True}),
    Row("PPO unbiased, batch_size=2: first minibatch", PPO, {**UNBIASED, "batch_size": 2}),
    Row("PPO unbiased, batch_size=2: whole epoch", PPO, {**UNBIASED, "batch_size": 2}, minibatches="epoch"),
]


def build(row: Row) -> Any:
    """The row's model on a fresh ChainWalk, float32 as SB3 builds it; one rollout is one episode."""
    settings = dict(row.settings)
    if row.algorithm is PPO:
        settings.setdefault("batch_size", HORIZON)  # one minibatch: the whole rollout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PPO notes a batch_size that splits the rollout
        return row.algorithm("MlpPolicy", ChainWalk(), n_steps=HORIZON, seed=0, device="cpu", **settings)


def trained_policy() -> dict[str, torch.Tensor]:
    """A policy trained for 200 steps with A2C (gamma=1): it moves right with probability 0.86 to 0.97."""
    model = A2C("MlpPolicy", ChainWalk(), n_steps=HORIZON, gamma=1.0, seed=0, device="cpu")
    model.learn(total_timesteps=200)
    return model.policy.state_dict()


def main() -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    try:
        trained = trained_policy()
        results: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        header = f"{'setting':<44} {'objective':<10} {'policy':<8} {'passes':<6} {'‖bias‖/‖grad J‖':>16} {'seconds':>8}"
        print(header)
        print("-" * len(header))
        for row in ROWS:
            figures: dict[str, dict[str, Any]] = {}
            for policy in ("initial", "trained"):
                model = build(row)
                if policy == "trained":
                    model.policy.load_state_dict(trained)
                start = time.perf_counter()
                report = check_sb3(
                    model,
                    objective=row.objective,
                    minibatches=row.minibatches,
                    raise_exception=False,
                    top_sequences=0,
                    **TOLERANCE,
                )
                seconds = time.perf_counter() - start
                figures[policy] = {
                    "ok": report.ok,
                    "relative_bias": relative_bias(report),
                    "num_sequences": report.num_sequences,
                    "seconds": seconds,
                }
                claimed = row.objective + ("+H" if row.settings.get("ent_coef") else "")
                print(
                    f"{row.label:<44} {claimed:<10} {policy:<8} {'yes' if report.ok else 'no':<6} "
                    f"{figures[policy]['relative_bias']:>16.3g} {seconds:>8.2f}"
                )
            results[(row.label, row.objective)] = figures
        sequences = {f["num_sequences"] for figures in results.values() for f in figures.values()}
        print(f"\nevery check enumerated {', '.join(map(str, sorted(sequences)))} action sequences")
        return results
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
