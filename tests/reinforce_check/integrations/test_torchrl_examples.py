"""torchrl's bias table runs, and the conclusions docs/integrations/torchrl.rst draws from it hold.

Every check in ``examples/torchrl_bias_table.py`` runs at the check's own tolerances, ``rtol=1e-6,
atol=1e-9`` (torchrl's rollouts are torch tensors, promoted to float64 with the model): the passing
rows depart by at most 1e-13 of the gradient, every biased one by more than 1e-5. Figures that
algebra says are equal (A2C's and PPO's at theta_old = theta, two ways of standardizing the
advantages) are asserted equal to 1e-9.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ...test_examples import load

pytest.importorskip("torchrl")

PASSING = {
    ("ReinforceLoss unbiased: gamma=1, lmbda=1", "return"),
    ("A2CLoss unbiased: no entropy bonus", "return"),
    ("ClipPPOLoss unbiased", "return"),
    ("ClipPPOLoss unbiased, 3 of 4 steps: bootstraps", "return+V"),
}


@pytest.fixture(scope="module")
def table() -> Iterator[dict]:
    yield load("torchrl_bias_table").main()


def test_the_unbiased_settings_pass_and_every_departure_is_measured(table: dict) -> None:
    assert PASSING <= table.keys() and len(table) == 17
    for key, figures in table.items():
        assert figures.keys() == {"initial", "trained"}
        for policy, result in figures.items():
            assert result["ground_truth"] == "autograd", (key, policy)
            assert result["num_sequences"] == (8 if "3 of 4 steps" in key[0] else 16), (key, policy)
            assert result["seconds"] < 60, (key, policy)
            if key in PASSING:
                assert result["ok"] and result["relative_bias"] < 1e-13, (key, policy)
            else:
                assert not result["ok"] and result["relative_bias"] > 1e-5, (key, policy)


def test_a2c_and_ppo_share_their_figures_and_standardizing_is_the_largest_departure(table: dict) -> None:
    # At theta_old = theta PPO's clipped ratio is 1 with A2C's gradient.
    for objective in ("return+H", "discounted+H"):
        for policy in ("initial", "trained"):
            a2c = table[("A2CLoss defaults", objective)][policy]["relative_bias"]
            ppo = table[("ClipPPOLoss defaults", objective)][policy]["relative_bias"]
            assert a2c == pytest.approx(ppo, rel=1e-9)
    # PPO's normalize_advantage and GAE's average_gae are the same standardization over the rollout.
    for policy in ("initial", "trained"):
        normalized = table[("ClipPPOLoss unbiased but normalize_advantage", "return")][policy]["relative_bias"]
        averaged = table[("ClipPPOLoss unbiased, GAE(average_gae=True)", "return")][policy]["relative_bias"]
        assert normalized == pytest.approx(averaged, rel=1e-9) and normalized > 0.5
        others = [f[policy]["relative_bias"] for key, f in table.items() if not _standardizes(key[0])]
        assert normalized > (10 if policy == "initial" else 1) * max(others)


def _standardizes(label: str) -> bool:
    return "normalize_advantage" in label or "average_gae" in label


def test_the_entropy_bonus_is_a_small_bias_and_bootstrapping_a_large_one_once_the_critic_learned(table: dict) -> None:
    for figures in table[("A2CLoss unbiased but entropy_coeff=0.01", "return+H")].values():
        assert 1e-5 < figures["relative_bias"] < 1e-2
    bootstrapped = table[("ClipPPOLoss unbiased, 3 of 4 steps: bootstraps", "return")]
    assert bootstrapped["trained"]["relative_bias"] > 10 * bootstrapped["initial"]["relative_bias"]
