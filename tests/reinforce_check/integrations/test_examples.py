"""The integration examples: each runs, and the conclusions the docs draw from its figures hold.

Tolerances: the SB3 table checks at ``rtol=1e-5, atol=1e-8`` (what SB3's float32 rollout buffer
resolves), the CleanRL example at the check's defaults ``rtol=1e-6, atol=1e-9`` (its storage is
torch tensors, promoted to float64 with the model).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ...test_examples import load

pytest.importorskip("stable_baselines3")


@pytest.fixture(scope="module")
def sb3_table() -> Iterator[dict]:
    yield load("sb3_bias_table").main()


@pytest.fixture(scope="module")
def cleanrl() -> Iterator[object]:
    yield load("cleanrl_ppo")


def test_sb3_unbiased_settings_pass_and_every_departure_is_measured(sb3_table: dict) -> None:
    passing = {
        ("A2C unbiased: gamma=1", "return"),
        ("PPO unbiased", "return"),
        ("PPO unbiased, batch_size=2: whole epoch", "return"),
    }
    for key, figures in sb3_table.items():
        for policy, result in figures.items():
            assert result["num_sequences"] == 16
            assert result["seconds"] < 60
            if key in passing:
                assert result["ok"] and result["relative_bias"] < 1e-6, (key, policy)
    biased = [
        ("A2C defaults (gamma=0.99)", "discounted"),
        ("A2C defaults (gamma=0.99)", "return"),
        ("A2C gamma=1, normalize_advantage", "return"),
        ("PPO defaults", "discounted"),
        ("PPO defaults", "return"),
        ("PPO unbiased but gae_lambda=0.95", "return"),
        ("PPO unbiased but normalize_advantage", "return"),
        ("PPO unbiased, batch_size=2: first minibatch", "return"),
    ]
    for key in biased:
        for policy, result in sb3_table[key].items():
            assert not result["ok"] and result["relative_bias"] > 1e-4, (key, policy)
    # Advantage normalization and PPO's defaults are off by a large fraction of the gradient.
    assert sb3_table[("PPO defaults", "return")]["initial"]["relative_bias"] > 0.1
    assert sb3_table[("PPO unbiased but normalize_advantage", "return")]["initial"]["relative_bias"] > 0.1


def test_sb3_entropy_bonus_is_biased_once_the_policy_is_far_from_uniform(sb3_table: dict) -> None:
    figures = sb3_table[("A2C gamma=1, ent_coef=0.1", "return")]
    assert figures["initial"]["relative_bias"] < figures["trained"]["relative_bias"]
    assert not figures["trained"]["ok"]


def test_cleanrl_unbiased_settings_pass_and_its_defaults_do_not(cleanrl: object) -> None:
    results = cleanrl.main()  # type: ignore[attr-defined]
    unbiased, defaults, normalized = results.values()
    # The marked sampler records its graph under no_grad: autograd decides, and the whole bias is known.
    assert all(r["ground_truth"] == "autograd" for r in results.values())
    assert unbiased["ok"] and unbiased["num_sequences"] == 16 and unbiased["relative_bias"] < 1e-12
    assert not defaults["ok"] and defaults["relative_bias"] > 0.1
    assert not normalized["ok"] and normalized["relative_bias"] > 0.1
    assert all(r["seconds"] < 60 for r in results.values())


def test_cleanrl_reproduction_trains_as_the_script_does_once_the_check_is_over(cleanrl: object) -> None:
    module = cleanrl
    args = module.Args(num_envs=1, num_steps=4, num_minibatches=2, update_epochs=2)  # type: ignore[attr-defined]
    report = module.check(args, raise_exception=False, top_sequences=0, **module.TOLERANCE)  # type: ignore[attr-defined]
    assert report.num_sequences == 16
    # After a check, the same agent class trains: parameters move, the optimizer counts its steps.
    import gymnasium as gym

    torch.manual_seed(0)
    envs = gym.vector.SyncVectorEnv([lambda: module.ChainWalk()])  # type: ignore[attr-defined]
    agent = module.Agent(envs)  # type: ignore[attr-defined]
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    before = [p.detach().clone() for p in agent.parameters()]
    observation, _ = envs.reset(seed=0)
    storage = module.rollout(agent, envs, args, torch.Tensor(observation))  # type: ignore[attr-defined]
    np.random.seed(0)
    module.update(agent, optimizer, envs, args, storage)  # type: ignore[attr-defined]
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.parameters()))
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {args.update_epochs * args.num_minibatches}
