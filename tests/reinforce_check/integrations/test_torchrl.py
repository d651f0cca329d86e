"""check_torchrl on torchrl's own ReinforceLoss, A2CLoss and PPO losses, float32 as torchrl builds them.

The environment is :class:`ChainWalk` through torchrl's ``GymWrapper`` (3 steps, 2 actions, 8 action
sequences; ``max_steps=3`` covers one whole episode). Every check runs at the check's own tolerances,
``rtol=1e-6, atol=1e-9``: torchrl keeps its rollouts in torch tensors, which the check promotes to
float64 with the model, so the unbiased settings land at a relative error of about 1e-16 (asserted
below 1e-12); the biased ones depart by 1e-6 to 2 of the gradient, and each test states the range it
expects.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("torchrl")

from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule, TensorDictSequential  # noqa: E402
from torchrl.envs import GymWrapper, ParallelEnv, SerialEnv, TransformedEnv, VecNormV2  # noqa: E402
from torchrl.envs.utils import ExplorationType, exploration_type, set_exploration_type  # noqa: E402
from torchrl.modules import (  # noqa: E402
    MLP,
    MaskedCategorical,
    MaskedOneHotCategorical,
    OneHotCategorical,
    ProbabilisticActor,
    RunningValueNorm,
    ValueOperator,
)
from torchrl.objectives import A2CLoss, ClipPPOLoss, KLPENPPOLoss, ReinforceLoss, ValueEstimators  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402

from reinforce_check import check_reinforce  # noqa: E402
from reinforce_check.integrations import IntegrationError, relative_bias  # noqa: E402
from reinforce_check.integrations.torchrl import check_torchrl  # noqa: E402

from ...test_examples import load  # noqa: E402

ChainWalk = load("chain_walk").ChainWalk

HORIZON = 3
UNBIASED = {"gamma": 1.0, "lmbda": 1.0}
QUIET = {"raise_exception": False, "top_sequences": 0}

# Tiny matrices: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def environment(horizon: int = HORIZON) -> GymWrapper:
    return GymWrapper(ChainWalk(horizon))


def networks(horizon: int = HORIZON, seed: int = 0) -> tuple[ProbabilisticActor, ValueOperator]:
    """A float32 actor (one-hot categorical) and critic, initialized by torchrl from a fixed seed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        logits = TensorDictModule(
            MLP(in_features=horizon + 1, out_features=2, num_cells=[8]), in_keys=["observation"], out_keys=["logits"]
        )
        actor = ProbabilisticActor(
            logits,
            in_keys=["logits"],
            distribution_class=OneHotCategorical,
            return_log_prob=True,
            spec=environment(horizon).action_spec,
        )
        critic = ValueOperator(MLP(in_features=horizon + 1, out_features=1, num_cells=[8]), in_keys=["observation"])
    return actor, critic


def loss(kind: type, estimator: dict[str, Any] | None = UNBIASED, horizon: int = HORIZON, **settings: Any) -> Any:
    """A ``kind`` loss on fresh networks, with GAE(``estimator``) as its value estimator (None: torchrl's default)."""
    module = kind(*networks(horizon), **settings)
    if estimator is not None:
        module.make_value_estimator(ValueEstimators.GAE, **estimator)
    return module


LOSSES = [
    pytest.param(ReinforceLoss, {}, id="ReinforceLoss"),
    pytest.param(A2CLoss, {"entropy_bonus": False}, id="A2CLoss"),
    pytest.param(ClipPPOLoss, {"entropy_bonus": False}, id="ClipPPOLoss"),
    # Its KL penalty has no gradient at theta_old = theta; its adaptive beta is a buffer, put back.
    pytest.param(KLPENPPOLoss, {"entropy_bonus": False}, id="KLPENPPOLoss"),
]


@pytest.mark.parametrize(("kind", "settings"), LOSSES)
def test_the_unbiased_settings_pass_on_float32_losses(kind: type, settings: dict[str, Any]) -> None:
    module = loss(kind, **settings)
    report = check_torchrl(module, environment(), max_steps=HORIZON)
    assert report.ok and report.num_sequences == 2**HORIZON
    assert report.ground_truth == "autograd" and report.promoted
    assert relative_bias(report) < 1e-12
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_a2c_and_ppo_defaults_are_biased_for_both_objectives_by_the_same_amount() -> None:
    # Defaults: GAE(gamma=0.99, lmbda=0.95) and an entropy bonus of 0.01. At theta_old = theta PPO's
    # ratio is 1 and its gradient is A2C's, so the two losses depart from grad J by the same amount.
    figures = {}
    for kind in (A2CLoss, ClipPPOLoss):
        for objective in ("return", "discounted"):
            report = check_torchrl(loss(kind, None), environment(), max_steps=HORIZON, objective=objective, **QUIET)
            assert not report.ok
            figures[kind, objective] = relative_bias(report)
    assert figures[A2CLoss, "return"] == pytest.approx(figures[ClipPPOLoss, "return"], rel=1e-9)
    assert figures[A2CLoss, "discounted"] == pytest.approx(figures[ClipPPOLoss, "discounted"], rel=1e-9)
    assert 1e-4 < figures[A2CLoss, "return"] < 0.1 and 1e-4 < figures[A2CLoss, "discounted"] < 0.1


@pytest.mark.parametrize(
    ("estimator", "settings", "objective", "low", "high"),
    [
        ({"gamma": 0.99, "lmbda": 1.0}, {}, "discounted", 1e-3, 0.1),  # no gamma**t in front of the score
        ({"gamma": 1.0, "lmbda": 0.95}, {}, "return", 1e-4, 0.1),  # the critic's errors enter the advantage
        (UNBIASED, {"normalize_advantage": True}, "return", 0.1, 2.0),  # the batch's own statistics
        (UNBIASED, {"entropy_bonus": True}, "return", 1e-6, 1e-3),  # no score terms for the states' entropy
    ],
    ids=["gamma", "lmbda", "normalize_advantage", "entropy_bonus"],
)
def test_each_departure_alone_is_biased(
    estimator: dict[str, Any], settings: dict[str, Any], objective: str, low: float, high: float
) -> None:
    module = loss(ClipPPOLoss, estimator, **{"entropy_bonus": False, **settings})
    report = check_torchrl(module, environment(), max_steps=HORIZON, objective=objective, **QUIET)  # type: ignore[arg-type]
    assert not report.ok and low < relative_bias(report) < high


def test_td0_advantages_are_biased_and_td1_ones_are_not() -> None:
    td0 = loss(A2CLoss, None, entropy_bonus=False)
    td0.make_value_estimator(ValueEstimators.TD0, gamma=1.0)
    td1 = loss(A2CLoss, None, entropy_bonus=False)
    td1.make_value_estimator(ValueEstimators.TD1, gamma=1.0)
    report = check_torchrl(td0, environment(), max_steps=HORIZON, **QUIET)
    assert not report.ok and 1e-3 < relative_bias(report) < 1.0
    assert check_torchrl(td1, environment(), max_steps=HORIZON).ok


def test_an_advantage_module_run_before_the_loss_is_what_the_loss_uses() -> None:
    # torchrl's PPO tutorial computes GAE apart, with average_gae=True: a standardization of the
    # advantages over the rollout, which depends on the sampled actions.
    actor, critic = networks()
    module = ClipPPOLoss(actor, critic, entropy_bonus=False)
    plain = GAE(value_network=critic, **UNBIASED)
    averaged = GAE(value_network=critic, average_gae=True, **UNBIASED)
    assert check_torchrl(module, environment(), max_steps=HORIZON, advantage=plain).ok
    report = check_torchrl(module, environment(), max_steps=HORIZON, advantage=averaged, **QUIET)
    assert not report.ok and relative_bias(report) > 0.1
    assert module._value_estimator is None  # the loss's own estimator was never made


def test_a_rollout_that_stops_inside_its_episode_is_exact_for_the_return_plus_the_critics_value() -> None:
    # gamma = lambda = 1 bootstrapped from V(s_T): the exact gradient of E[sum of r_t + V(s_T)],
    # V held fixed; against the return collected alone, V(s_T)'s score terms are the bias.
    module = loss(ClipPPOLoss, entropy_bonus=False)
    collected = check_torchrl(module, environment(), max_steps=HORIZON - 1, **QUIET)
    assert collected.num_sequences == 2 ** (HORIZON - 1) and not collected.ok
    assert 1e-3 < relative_bias(collected) < 1.0
    assert check_torchrl(module, environment(), max_steps=HORIZON - 1, bootstrap=True).ok
    # Through a reset: one whole episode of 2 steps, then a second one stopped after 1.
    short = loss(ClipPPOLoss, horizon=2, entropy_bonus=False)
    across = check_torchrl(short, environment(2), max_steps=3, break_when_any_done=False, bootstrap=True)
    assert across.ok and across.num_sequences == 8


class EdgeWalk(ChainWalk):  # type: ignore[misc, valid-type]
    """ChainWalk whose episode also ends when the walker steps left of the start: lengths vary."""

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = super().step(action)
        return observation, reward, terminated or self.position < 0, truncated, info


def test_a_mean_over_episodes_of_varying_length_is_biased_and_a_sum_is_not() -> None:
    # reduction="mean" divides each sequence's loss by its own length N(a): the score of step t is
    # weighed by G_t / N(a), which is not the reward-to-go of R / N(a) (N depends on later actions).
    env = GymWrapper(EdgeWalk(HORIZON))
    mean = check_torchrl(loss(A2CLoss, entropy_bonus=False), env, max_steps=HORIZON, **QUIET)
    assert mean.num_sequences == 5 and not mean.ok and relative_bias(mean) > 0.1
    assert check_torchrl(loss(A2CLoss, entropy_bonus=False, reduction="sum"), env, max_steps=HORIZON).ok


def test_a_serial_env_is_enumerated_as_one_batch() -> None:
    module = loss(A2CLoss, horizon=2, entropy_bonus=False)
    env = SerialEnv(2, lambda: environment(2))
    try:
        report = check_torchrl(module, env, max_steps=2)
    finally:
        env.close(raise_if_closed=False)
    assert report.ok and report.num_sequences == 2 ** (2 * 2)


def test_critic_parameters_are_left_out_by_default_and_show_the_critic_loss_when_included() -> None:
    report = check_torchrl(loss(A2CLoss, entropy_bonus=False), environment(), max_steps=HORIZON, params="all", **QUIET)
    failing = {p.name for p in report.parameters if not p.ok}
    assert not report.ok and failing and all(name.startswith("critic_network_params.") for name in failing)
    no_critic_loss = loss(A2CLoss, entropy_bonus=False, critic_coeff=None)
    assert check_torchrl(no_critic_loss, environment(), max_steps=HORIZON, params="all").ok


def shared_networks() -> tuple[ProbabilisticActor, TensorDictSequential]:
    """An actor and a critic on one trunk with parameters."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        trunk = TensorDictModule(
            torch.nn.Sequential(torch.nn.Linear(HORIZON + 1, 8), torch.nn.Tanh()),
            in_keys=["observation"],
            out_keys=["hidden"],
        )
        head = TensorDictModule(torch.nn.Linear(8, 2), in_keys=["hidden"], out_keys=["logits"])
        actor = ProbabilisticActor(
            TensorDictSequential(trunk, head),
            in_keys=["logits"],
            distribution_class=OneHotCategorical,
            return_log_prob=True,
            spec=environment().action_spec,
        )
        value = TensorDictModule(torch.nn.Linear(8, 1), in_keys=["hidden"], out_keys=["state_value"])
        critic = TensorDictSequential(trunk, value)
    return actor, critic


def test_shared_parameters_need_separate_losses() -> None:
    shared = ClipPPOLoss(*shared_networks(), entropy_bonus=False)
    shared.make_value_estimator(ValueEstimators.GAE, **UNBIASED)
    with pytest.raises(IntegrationError, match=r"actor_network_params\.[.\w]*weight.*separate_losses=True"):
        check_torchrl(shared, environment(), max_steps=HORIZON)
    separate = ClipPPOLoss(*shared_networks(), entropy_bonus=False, separate_losses=True)
    separate.make_value_estimator(ValueEstimators.GAE, **UNBIASED)
    report = check_torchrl(separate, environment(), max_steps=HORIZON)
    assert report.ok and len(report.parameters) == 4  # the trunk and the actor's head


class Broken(Exception):
    """Raised by a policy on purpose, in the middle of a check."""


@pytest.fixture
def deterministic_exploration() -> Iterator[None]:
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        yield


@pytest.mark.usefixtures("deterministic_exploration")
@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_the_loss_module_and_the_exploration_type_are_put_back(fails: bool) -> None:
    actor, critic = networks()
    module = A2CLoss(actor, critic, advantage_norm=RunningValueNorm())  # the default estimator is made on first use
    norm = module.advantage_norm
    norm.update(torch.tensor([[0.5], [2.0], [1.0]]))  # running statistics that the check's runs would move
    for p in module.parameters():
        p.grad = torch.full_like(p, 0.25)
    parameters = {n: p.detach().clone() for n, p in module.named_parameters()}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    attributes = {k: copy.copy(v) if isinstance(v, dict) else v for k, v in vars(module).items()}
    calls = 0

    def policy(tensordict: TensorDict) -> TensorDict:
        nonlocal calls
        calls += 1
        if fails and calls == 5:
            raise Broken
        return actor(tensordict)

    if fails:
        with pytest.raises(Broken):
            check_torchrl(module, environment(), max_steps=HORIZON, policy=policy)
    else:
        report = check_torchrl(module, environment(), max_steps=HORIZON, policy=policy, **QUIET)
        # Each run starts from the same statistics, so the episode is a function of its actions.
        assert report.num_sequences == 2**HORIZON and not report.ok
    assert exploration_type() is ExplorationType.DETERMINISTIC
    assert all(torch.equal(parameters[n], p) and p.dtype == torch.float32 for n, p in module.named_parameters())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in module.parameters())
    assert all(torch.equal(buffers[n], b) for n, b in module.named_buffers())
    assert vars(module).keys() == attributes.keys()
    assert all(vars(module)[k] is v for k, v in attributes.items() if not isinstance(v, dict))
    assert module._value_estimator is None and module.__dict__.get("_cache", {}) == attributes.get("_cache", {})
    assert module.advantage_norm is norm


@pytest.mark.parametrize(
    "distribution",
    [OneHotCategorical, MaskedCategorical, MaskedOneHotCategorical],
    ids=["OneHotCategorical", "MaskedCategorical", "MaskedOneHotCategorical"],
)
def test_torchrls_discrete_distributions_are_enumerated(distribution: type) -> None:
    logits = torch.tensor([0.3, -1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    payoff = torch.tensor([1.0, 3.0, 0.0, 2.0], dtype=torch.float64)
    masked = distribution is not OneHotCategorical
    mask = torch.tensor([True, True, False, True])

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        dist = distribution(logits=logits, mask=mask) if masked else distribution(logits=logits)
        action = dist.sample()
        index = action.argmax(-1) if action.dim() else action  # one-hot or index
        reward = payoff[index]
        return reward, -dist.log_prob(action) * reward

    report = check_reinforce(episode, {"logits": logits})
    assert report.ok and report.num_sequences == (3 if masked else 4)


def test_what_cannot_be_checked_is_refused() -> None:
    module = loss(A2CLoss)
    env = environment()
    with pytest.raises(IntegrationError, match="max_steps must be a positive integer"):
        check_torchrl(module, env, max_steps=0)
    with pytest.raises(IntegrationError, match="objective must be"):
        check_torchrl(module, env, max_steps=HORIZON, objective="episodic")  # type: ignore[arg-type]
    with pytest.raises(IntegrationError, match="ReinforceLoss, A2CLoss or PPO loss"):
        check_torchrl(object(), env, max_steps=HORIZON)
    with pytest.raises(IntegrationError, match="torchrl environment.*GymWrapper"):
        check_torchrl(module, ChainWalk(HORIZON), max_steps=HORIZON)
    with pytest.raises(IntegrationError, match="params must be"):
        check_torchrl(module, env, max_steps=HORIZON, params="critic")
    with pytest.raises(IntegrationError, match="reduction is 'none'"):
        check_torchrl(loss(A2CLoss, reduction="none"), env, max_steps=HORIZON)
    with pytest.raises(IntegrationError, match="advantage must be a torchrl value estimator"):
        check_torchrl(module, env, max_steps=HORIZON, advantage=lambda tensordict: tensordict)
    actor, _ = networks()
    with pytest.raises(IntegrationError, match="bootstrap=True needs the loss's critic"):
        check_torchrl(ClipPPOLoss(actor, None, critic_coeff=0.0), env, max_steps=HORIZON, bootstrap=True)
    import gymnasium

    continuous = GymWrapper(gymnasium.make("Pendulum-v1"))
    with pytest.raises(IntegrationError, match="discrete actions.*continuous"):
        check_torchrl(module, continuous, max_steps=HORIZON)
    normalized = TransformedEnv(environment(), VecNormV2(in_keys=["observation"]))
    with pytest.raises(IntegrationError, match="VecNormV2.*freeze"):
        check_torchrl(module, normalized, max_steps=HORIZON)
    parallel = ParallelEnv(1, environment)
    assert parallel.is_closed
    with pytest.raises(IntegrationError, match=r"ParallelEnv's workers are not running.*env\.start\(\)"):
        check_torchrl(module, parallel, max_steps=HORIZON)


def test_importing_the_adapters_does_not_import_torchrl() -> None:
    code = (
        "import sys, reinforce_check.integrations, reinforce_check.integrations.torchrl; "
        "print(sorted(m for m in ('torchrl', 'tensordict') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
