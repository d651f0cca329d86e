"""check_sb3 on Stable-Baselines3's own A2C and PPO, float32 as SB3 builds them (promoted by the check).

The environment is :class:`Chain` (3 steps, 2 actions, 8 action sequences; ``n_steps=3`` covers one
whole episode). The policies' action heads are redrawn from a seeded generator, far from uniform, so
that an entropy term or a baseline error shows. Every check states its tolerance: ``rtol=1e-5,
atol=1e-8`` (check_sb3's defaults, written out), which SB3's float32 rollout buffer resolves
(the unbiased settings land at a relative error of a few 1e-8); the biased defaults are off by
1e-3 to 1.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from gymnasium import spaces  # noqa: E402
from stable_baselines3 import A2C, PPO  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

from reinforce_check.integrations import IntegrationError, relative_bias  # noqa: E402
from reinforce_check.integrations.sb3 import check_sb3  # noqa: E402

from ...test_examples import load  # noqa: E402

Chain = load("chain_walk").ChainWalk

TOLERANCE = {"rtol": 1e-5, "atol": 1e-8}
HORIZON = 3
UNBIASED = {"gamma": 1.0, "gae_lambda": 1.0, "normalize_advantage": False, "ent_coef": 0.0}
QUIET = {"raise_exception": False, "top_sequences": 0, **TOLERANCE}


# Tiny matrices: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def sharpened(model: Any, seed: int = 0) -> Any:
    """Redraw the action head from a seeded generator: a policy far from uniform, as after training."""
    generator = torch.Generator().manual_seed(seed)
    head = model.policy.action_net.weight
    with torch.no_grad():
        head.copy_(torch.randn(head.shape, generator=generator))
    return model


def a2c(**settings: Any) -> A2C:
    return sharpened(A2C("MlpPolicy", Chain(HORIZON), n_steps=HORIZON, seed=0, device="cpu", **settings))


def ppo(**settings: Any) -> PPO:
    settings.setdefault("batch_size", HORIZON)
    settings.setdefault("n_steps", HORIZON)
    return sharpened(PPO("MlpPolicy", Chain(settings["n_steps"]), seed=0, device="cpu", **settings))


@pytest.mark.parametrize("make", [a2c, ppo], ids=["A2C", "PPO"])
def test_the_unbiased_settings_pass_on_float32_models(make: Any) -> None:
    model = make(**UNBIASED)
    report = check_sb3(model, **TOLERANCE)
    assert report.ok and report.num_sequences == 2**HORIZON
    assert report.ground_truth == "autograd" and report.promoted
    assert relative_bias(report) < 1e-6
    assert model.policy.action_net.weight.dtype == torch.float32


def test_a2c_defaults_are_biased_for_both_objectives_and_more_for_the_discounted_one() -> None:
    # gamma=0.99 without gamma**t in front of each score term: not the gradient of the discounted
    # return, and not that of the undiscounted one either (Nota & Thomas, 2020).
    model = a2c()
    undiscounted = check_sb3(model, raise_exception=False, top_sequences=0, **TOLERANCE)
    discounted = check_sb3(model, objective="discounted", raise_exception=False, top_sequences=0, **TOLERANCE)
    assert not undiscounted.ok and not discounted.ok
    assert 1e-3 < relative_bias(undiscounted) < relative_bias(discounted) < 0.1


def test_ppo_defaults_are_biased_by_order_one() -> None:
    report = check_sb3(ppo(), raise_exception=False, top_sequences=0, **TOLERANCE)
    assert not report.ok and relative_bias(report) > 0.3


@pytest.mark.parametrize(
    ("setting", "low", "high"),
    [({"gae_lambda": 0.95}, 1e-3, 1.0), ({"normalize_advantage": True}, 0.1, 2.0)],
    ids=["gae_lambda", "normalize_advantage"],
)
def test_each_default_alone_is_biased(setting: dict[str, Any], low: float, high: float) -> None:
    report = check_sb3(ppo(**{**UNBIASED, **setting}), raise_exception=False, top_sequences=0, **TOLERANCE)
    assert not report.ok and low < relative_bias(report) < high


def test_the_entropy_bonus_is_not_the_gradient_of_the_entropy_regularized_objective() -> None:
    # SB3 differentiates the entropy at the visited states, not the states' dependence on the
    # policy: the score terms of the entropy are missing. Against the return alone it is biased too.
    model = a2c(**{**UNBIASED, "ent_coef": 0.1})
    regularized = check_sb3(model, raise_exception=False, top_sequences=0, **TOLERANCE)
    plain = check_sb3(model, entropy=False, raise_exception=False, top_sequences=0, **TOLERANCE)
    assert not regularized.ok and not plain.ok
    assert 1e-3 < relative_bias(regularized) < relative_bias(plain)


def test_a_rollout_longer_than_the_episode_bootstraps_and_is_biased() -> None:
    model = sharpened(A2C("MlpPolicy", Chain(2), n_steps=3, seed=0, device="cpu", **UNBIASED))
    report = check_sb3(model, raise_exception=False, top_sequences=0, **TOLERANCE)
    assert report.num_sequences == 8  # the third step starts a second episode
    assert not report.ok


def test_ppo_minibatches_first_is_one_fixed_shuffle_and_epoch_is_the_full_batch() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SB3 notes the 4 samples split into minibatches of 2
        model = ppo(**UNBIASED, n_steps=4, batch_size=2)
    first = check_sb3(model, raise_exception=False, top_sequences=0, **TOLERANCE)
    epoch = check_sb3(model, minibatches="epoch", **TOLERANCE)
    assert first.num_sequences == epoch.num_sequences == 16
    assert not first.ok and epoch.ok


def test_value_parameters_are_left_out_by_default_and_show_the_value_loss_when_included() -> None:
    model = a2c(**UNBIASED)
    report = check_sb3(model, params="all", raise_exception=False, top_sequences=0, **TOLERANCE)
    assert not report.ok
    failing = {p.name for p in report.parameters if not p.ok}
    assert failing and all("value" in name for name in failing)
    assert check_sb3(a2c(**UNBIASED, vf_coef=0.0), params="all", **TOLERANCE).ok


class SharedTrunk(BaseFeaturesExtractor):  # type: ignore[misc]
    """A features extractor with parameters, shared by the actor and the critic."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, features_dim=8)
        self.linear = torch.nn.Linear(int(np.prod(observation_space.shape)), 8)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(observations))


def test_shared_parameters_need_vf_coef_zero() -> None:
    kwargs = {"features_extractor_class": SharedTrunk, "share_features_extractor": True}
    with pytest.raises(IntegrationError, match="features_extractor.linear.weight.*vf_coef=0"):
        check_sb3(a2c(**UNBIASED, policy_kwargs=kwargs), **TOLERANCE)
    report = check_sb3(a2c(**UNBIASED, vf_coef=0.0, policy_kwargs=kwargs), **TOLERANCE)
    assert report.ok and any("features_extractor" in p.name for p in report.parameters)


def test_the_models_state_is_put_back_and_it_still_learns() -> None:
    model = ppo(**UNBIASED)
    model.learn(total_timesteps=2 * HORIZON)
    parameters = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.policy.named_parameters() if p.grad is not None}
    assert grads  # SB3 leaves the last step's gradients in place
    optimizer = model.policy.optimizer.state_dict()
    adam_steps = {k: v["step"].clone() for k, v in optimizer["state"].items()}
    lr = [g["lr"] for g in model.policy.optimizer.param_groups]
    counters = (model.num_timesteps, model._n_updates, len(model.ep_info_buffer))
    buffer = model.rollout_buffer
    rewards = buffer.rewards.copy()
    logged = dict(model.logger.name_to_value)
    model.policy.set_training_mode(True)

    check_sb3(model, **TOLERANCE)

    assert all(torch.equal(parameters[n], p) for n, p in model.policy.named_parameters())
    assert all(torch.equal(grads[n], p.grad) for n, p in model.policy.named_parameters() if p.grad is not None)
    assert {n for n, p in model.policy.named_parameters() if p.grad is not None} == set(grads)
    after = model.policy.optimizer.state_dict()
    assert {k: v["step"] for k, v in after["state"].items()} == adam_steps
    assert [g["lr"] for g in model.policy.optimizer.param_groups] == lr
    assert (model.num_timesteps, model._n_updates, len(model.ep_info_buffer)) == counters
    assert model.rollout_buffer is buffer and np.array_equal(buffer.rewards, rewards)
    assert dict(model.logger.name_to_value) == logged
    assert model.policy.training and "forward" not in vars(model.policy)
    assert model._last_obs is None  # the environment was stepped: the next learn() resets it
    model.learn(total_timesteps=HORIZON, reset_num_timesteps=False)
    assert model.num_timesteps == counters[0] + HORIZON


def test_a_model_that_never_learned_gets_no_logger_left_behind() -> None:
    model = a2c(**UNBIASED)
    check_sb3(model, **TOLERANCE)
    assert "_logger" not in vars(model)


def test_what_cannot_be_checked_is_refused() -> None:
    with pytest.raises(IntegrationError, match="on-policy model"):
        check_sb3(object())
    with pytest.raises(IntegrationError, match="objective"):
        check_sb3(a2c(), objective="episodic")  # type: ignore[arg-type]
    with pytest.raises(IntegrationError, match="minibatches"):
        check_sb3(a2c(), minibatches="all")  # type: ignore[arg-type]
    with pytest.raises(IntegrationError, match="params"):
        check_sb3(a2c(), params="critic")
    continuous = PPO("MlpPolicy", "Pendulum-v1", n_steps=4, batch_size=4, seed=0, device="cpu")
    with pytest.raises(IntegrationError, match="discrete-action"):
        check_sb3(continuous)
    normalized = A2C("MlpPolicy", VecNormalize(DummyVecEnv([lambda: Chain(HORIZON)])), n_steps=HORIZON, device="cpu")
    with pytest.raises(IntegrationError, match="VecNormalize"):
        check_sb3(normalized)
    normalized.env.training = False  # type: ignore[union-attr]
    assert check_sb3(normalized, **QUIET).num_sequences == 2**HORIZON

