"""float32, float16 and bfloat16 code is checked in float64 without edits, and left as it was.

The policies cast their own tensors as real models do (``torch.from_numpy(obs).float()``,
``dtype=torch.float32``, autocast regions). Gradient tests state their tolerances: a promoted check
uses the float64 defaults (rtol=1e-6, atol=1e-9, fd_rtol=1e-5, fd_atol=1e-7); a check without
promotion uses those derived from float32, sqrt(eps) = 3.45e-4.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical

from reinforce_check import InvalidOptionError, ReinforceCheckError, check_reinforce
from reinforce_check.cli import EXIT_OK, main
from reinforce_check.precision import (
    Tolerances,
    choose_precision,
    promoting,
    unpromoted,
)

# Two decisions among three actions, from observations stored as numpy float32, as an environment
# returns them.
OBS = np.array([[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 1.0]], dtype=np.float32)
REWARD = [[1.0, 0.0, 2.0], [0.5, 1.5, -1.0]]
STEPS = len(REWARD)
SQRT_EPS32 = math.sqrt(torch.finfo(torch.float32).eps)


class Policy(nn.Module):
    """Linear + softmax over a numpy observation, cast by the model itself (``cast``: ``.float()``)."""

    def __init__(self, *, seed: int = 0, cast: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(4, 3)
        with torch.no_grad():  # seeded without touching the global generator
            self.linear.weight.copy_(torch.randn(3, 4, generator=generator))
            self.linear.bias.copy_(torch.randn(3, generator=generator))
        self.cast = cast

    def forward(self, obs: np.ndarray) -> torch.Tensor:
        return torch.softmax(self.linear(self.cast(torch.from_numpy(obs))), dim=-1)


def _returns(rewards: torch.Tensor, biased: bool) -> torch.Tensor:
    """Reward-to-go along the last dimension; ``biased`` normalizes it within the episode (the
    action-dependent baseline of pytorch/examples' reinforce.py)."""
    returns = rewards.flip(-1).cumsum(-1).flip(-1)
    if biased:
        returns = (returns - returns.mean(-1, keepdim=True)) / (returns.std(-1, keepdim=True) + 1e-8)
    return returns


def reinforce(policy: Policy, *, biased: bool = False) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """One episode: REINFORCE with reward-to-go, correct unless ``biased``."""

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, rewards = [], []
        for step in range(STEPS):
            dist = Categorical(probs=policy(OBS[step]))
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            rewards.append(torch.tensor(REWARD[step], dtype=torch.float32)[action])
        reward = torch.stack(rewards)
        loss = -(torch.stack(log_probs) * _returns(reward, biased).detach()).sum()
        return reward.sum(), loss

    return episode


def reinforce_batched(policy: Policy, *, biased: bool = False) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``episode(rows)``: the same episode for independent rows."""

    def episode(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, rewards = [], []
        for step in range(STEPS):
            probs = policy(np.repeat(OBS[step][None, :], rows, axis=0))
            dist = Categorical(probs=probs)
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            rewards.append(torch.tensor(REWARD[step], dtype=torch.float32)[action])
        reward = torch.stack(rewards, dim=1)
        loss = -(torch.stack(log_probs, dim=1) * _returns(reward, biased).detach()).sum(dim=1)
        return reward.sum(dim=1), loss

    return episode


def episode_for(policy: Policy, *, batched: bool, biased: bool = False) -> Callable[..., Any]:
    return (reinforce_batched if batched else reinforce)(policy, biased=biased)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor's values: equal only if the values are bitwise equal."""
    return tensor.detach().reshape(-1).view(torch.uint8).clone()


# --- promotion: float32, float16, bfloat16 ----------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_float32_module_with_correct_reinforce_passes_in_float64(batched: bool) -> None:
    policy = Policy()
    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    report = check_reinforce(episode_for(policy, batched=batched), policy, batched=batched)
    assert report.ok and report.promoted and report.precision == "float64"
    assert report.num_sequences == 9
    assert report.max_abs_error < 1e-12
    assert all(p.target.dtype == torch.float64 for p in report.parameters)
    assert policy.linear.weight.dtype == torch.float32


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_float32_module_with_returns_normalized_in_the_episode_is_caught(batched: bool) -> None:
    policy = Policy()
    # Default float64 tolerances: rtol=1e-6, atol=1e-9; the bias is of order one.
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(episode_for(policy, batched=batched, biased=True), policy, batched=batched)
    report = caught.value.report
    assert report.promoted
    assert report.max_abs_error > 1e-2
    assert "(float64 (promoted))" in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_bfloat16_and_float16_parameters_are_checked_in_float64(dtype: torch.dtype) -> None:
    policy = Policy().to(dtype)
    before = {name: _bits(p) for name, p in policy.named_parameters()}
    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    report = check_reinforce(reinforce(policy), policy)
    assert report.ok and report.promoted
    assert report.max_abs_error < 1e-12
    assert str(dtype).removeprefix("torch.") in report.notes[-1]
    biased = check_reinforce(reinforce(policy, biased=True), policy, raise_exception=False)
    assert not biased.ok and biased.max_abs_error > 1e-2
    for name, p in policy.named_parameters():
        assert p.dtype == dtype and torch.equal(_bits(p), before[name])


def test_promoted_gradients_equal_those_of_the_model_converted_by_hand() -> None:
    policy = Policy()
    by_hand = copy.deepcopy(policy).double()
    by_hand.cast = torch.Tensor.double
    promoted = check_reinforce(reinforce(policy), policy)
    reference = check_reinforce(reinforce(by_hand), by_hand)
    assert not reference.promoted
    assert promoted.objective == pytest.approx(reference.objective, abs=1e-12, rel=0)
    for mine, theirs in zip(promoted.parameters, reference.parameters):
        # The same float64 arithmetic: equal to 1e-12.
        torch.testing.assert_close(mine.target, theirs.target, rtol=0, atol=1e-12)
        torch.testing.assert_close(mine.estimate, theirs.estimate, rtol=0, atol=1e-12)


def test_code_inside_autocast_runs_in_float64_with_autocast_off() -> None:
    policy = Policy()
    seen: list[tuple[torch.dtype, bool]] = []

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs = policy(OBS[0])
            seen.append((probs.dtype, torch.is_autocast_enabled("cpu")))
        dist = Categorical(probs=probs)
        action = dist.sample()
        reward = torch.tensor(REWARD[0], dtype=torch.float32)[action]
        return reward, -dist.log_prob(action) * reward

    by_hand = copy.deepcopy(policy).double()
    by_hand.cast = torch.Tensor.double

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        dist = Categorical(probs=by_hand(OBS[0]))
        action = dist.sample()
        reward = torch.tensor(REWARD[0], dtype=torch.float64)[action]
        return reward, -dist.log_prob(action) * reward

    # Default float64 tolerances; the exact gradients equal the hand-converted model's to 1e-12.
    report = check_reinforce(episode, policy)
    assert report.ok
    assert set(seen) == {(torch.float64, False)}
    expected = check_reinforce(reference, by_hand)
    for mine, theirs in zip(report.parameters, expected.parameters):
        torch.testing.assert_close(mine.target, theirs.target, rtol=0, atol=1e-12)
    assert not torch.is_autocast_enabled("cpu")


def test_a_check_called_inside_autocast_runs_the_episode_without_it() -> None:
    policy = Policy()
    seen: list[bool] = []

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(torch.is_autocast_enabled("cpu"))
        return reinforce(policy)()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Default float64 tolerances: rtol=1e-6, atol=1e-9.
        report = check_reinforce(episode, policy)
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert report.ok and report.max_abs_error < 1e-12
    assert seen and not any(seen)


# The dtype of the buffer each backward of _Float32Accumulator made.
_BACKWARD_DTYPES: list[torch.dtype] = []


class _Float32Accumulator(torch.autograd.Function):
    """The identity, whose backward accumulates its gradient in a float32 buffer of its own, as
    fused kernels do (TRL's fused LM head)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros(grad.shape, dtype=torch.float32)
        _BACKWARD_DTYPES.append(buffer.dtype)
        return buffer.add_(grad.float()).to(grad.dtype)


class _Float32AccumulatorVjp(torch.autograd.Function):
    """The same, with its backward written as ``vjp``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def vjp(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _Float32Accumulator.backward(ctx, grad)


@pytest.mark.parametrize("function", [_Float32Accumulator, _Float32AccumulatorVjp], ids=["backward", "vjp"])
def test_the_backward_of_a_custom_function_runs_in_float64_too(function: type[torch.autograd.Function]) -> None:
    theta = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)  # float32
    apply = vars(torch.autograd.Function)["apply"]
    _BACKWARD_DTYPES.clear()

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        dist = Categorical(logits=function.apply(theta))
        action = dist.sample()
        # No baseline under a large constant reward: each sequence's gradient is about 1000 times
        # the expected one, so float32 accumulation (relative 6e-8) would leave about 6e-5.
        reward = 1000.0 + action.double()
        return reward, -dist.log_prob(action) * reward

    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    report = check_reinforce(episode, {"theta": theta})
    assert report.ok and report.max_abs_error < 1e-11
    assert _BACKWARD_DTYPES and set(_BACKWARD_DTYPES) == {torch.float64}
    assert vars(torch.autograd.Function)["apply"] is apply  # the patch is gone
    # Outside a check the function is itself again.
    (theta * 0 + function.apply(theta)).sum().backward()
    assert _BACKWARD_DTYPES[-1] == torch.float32


def test_promote_true_checks_float64_parameters_whose_code_casts_to_float32() -> None:
    policy = Policy().double()  # float64 parameters; the code still calls .float() on its inputs

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        probs = policy(OBS[0]).float()  # float32 softmax output, as code written for float32 has
        dist = Categorical(probs=probs)
        action = dist.sample()
        reward = torch.tensor(REWARD[0], dtype=torch.float32)[action]
        return reward, -dist.log_prob(action) * reward

    with pytest.raises(RuntimeError, match="dtype"):
        check_reinforce(episode, policy)  # float32 input to float64 weights: the code needs promotion
    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    report = check_reinforce(episode, policy, promote=True)
    assert report.ok and report.promoted and report.max_abs_error < 1e-12
    assert "promote=True" in report.notes[-1]
    assert policy.linear.weight.dtype == torch.float64


def test_mixed_dtypes_are_promoted_together_or_use_the_least_precise_tolerances() -> None:
    policy = Policy()
    policy.linear.bias.data = policy.linear.bias.data.bfloat16()
    # Default float64 tolerances when promoted.
    report = check_reinforce(reinforce(policy), policy)
    assert report.ok and report.promoted
    assert "1 bfloat16 and float32" not in report.notes[-1]
    assert "2 bfloat16 and float32 parameter(s)" in report.notes[-1]
    assert (policy.linear.weight.dtype, policy.linear.bias.dtype) == (torch.float32, torch.bfloat16)
    own = choose_precision(list(policy.parameters()), [], promote=False)
    assert own.dtype == torch.bfloat16 and own.lower == (torch.bfloat16, torch.float32)


# --- restore guarantees --------------------------------------------------------------------------


class Normalized(nn.Module):
    """A float32 policy with buffers: a BatchNorm in training mode (running statistics and a
    counter updated in place on every call), a float32 buffer read and one updated in place."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.norm = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 4, generator=generator))
        self.register_buffer("scale", torch.tensor(0.75))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, obs: np.ndarray) -> torch.Tensor:
        self.calls.add_(1)
        hidden = self.norm(torch.from_numpy(obs).float()) * self.scale
        return torch.softmax(self.linear(hidden), dim=-1)[0]  # the first of two observations decides


def normalized_episode(model: Normalized, *, biased: bool = False, fail_at: int | None = None) -> Callable[[], Any]:
    runs = [0]

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        runs[0] += 1
        if runs[0] == fail_at:
            raise RuntimeError("the environment crashed")
        log_probs, rewards = [], []
        for step in range(STEPS):
            dist = Categorical(probs=model(np.stack([OBS[step], OBS[1 - step]])))
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            rewards.append(torch.tensor(REWARD[step], dtype=torch.float32)[action])
        reward = torch.stack(rewards)
        return reward.sum(), -(torch.stack(log_probs) * _returns(reward, biased).detach()).sum()

    return episode


def _snapshot(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.dtype, torch.Tensor, Any, bool]]:
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    return {name: (t, t.dtype, _bits(t), t.grad, t.requires_grad) for name, t in tensors.items()}


def _global_state() -> dict[str, Any]:
    return {
        "default dtype": torch.get_default_dtype(),
        "autocast": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_autocast_cache_enabled()),
        "autocast enter": vars(torch.amp.autocast_mode.autocast)["__enter__"],
        "grad mode": torch.is_grad_enabled(),
        "torch function mode": torch._C._is_torch_function_mode_enabled(),
        "torch rng": torch.get_rng_state(),
        "python rng": random.getstate(),
        "numpy rng": np.random.get_state()[1].copy(),
        "promoting": promoting(),
    }


@pytest.fixture
def float32_default() -> Iterator[None]:
    """Run with float32 as torch's default dtype, as a model trained in float32 does."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("outcome", ["passes", "fails", "raises"])
@pytest.mark.usefixtures("float32_default")
def test_every_parameter_buffer_and_global_state_is_restored(outcome: str) -> None:
    model = Normalized()
    grad = torch.full((3, 4), 0.25)
    model.linear.weight.grad = grad  # an optimizer's leftover gradient; the bias has none
    episode = normalized_episode(model, biased=outcome == "fails", fail_at=5 if outcome == "raises" else None)
    before = _snapshot(model)
    state = _global_state()
    expected: type[BaseException] | None = {"passes": None, "fails": ReinforceCheckError, "raises": RuntimeError}[outcome]
    if expected is None:
        # Default float64 tolerances: rtol=1e-6, atol=1e-9.
        assert check_reinforce(episode, model).ok
    else:
        with pytest.raises(expected):
            check_reinforce(episode, model)
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for name, (tensor, dtype, bits, grad_before, requires_grad) in before.items():
        now, dtype_now, bits_now, grad_now, requires_grad_now = after[name]
        assert now is tensor, name
        assert dtype_now == dtype, name
        assert torch.equal(bits_now, bits), name
        assert grad_now is grad_before, name
        assert requires_grad_now == requires_grad, name
    assert model.linear.weight.grad is grad and model.linear.bias.grad is None
    assert model.norm.num_batches_tracked.item() == 0 and model.calls.item() == 0
    now_state = _global_state()
    for key in ("torch rng", "numpy rng"):
        assert torch.equal(torch.as_tensor(now_state.pop(key)), torch.as_tensor(state.pop(key))), key
    assert now_state == state


def test_an_optimizer_built_before_the_check_still_steps_the_float32_parameters() -> None:
    policy = Policy()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    check_reinforce(reinforce(policy), policy)
    weight = policy.linear.weight.detach().clone()
    _, loss = reinforce(policy)()  # sampled for real, outside any check
    loss.backward()
    optimizer.step()
    assert policy.linear.weight.dtype == torch.float32
    assert not torch.equal(policy.linear.weight.detach(), weight)


# --- without promotion ---------------------------------------------------------------------------


# Sequential mode only: in batched mode float32 rounding depends on the batch's size, and the
# replay check (tuned for float64) takes the difference for nondeterminism (docs/precision.rst).


def test_without_promotion_float32_runs_with_tolerances_derived_from_its_precision() -> None:
    policy = Policy()
    # Tolerances raised to float32's: rtol = atol = fd_rtol = fd_atol = sqrt(eps) = 3.45e-4,
    # fd_step = eps ** (1/3) = 4.9e-3.
    report = check_reinforce(reinforce(policy), policy, promote=False)
    assert report.ok and not report.promoted and report.precision == "float32"
    assert (report.rtol, report.atol, report.fd_rtol, report.fd_atol) == pytest.approx((SQRT_EPS32,) * 4)
    assert all(p.target.dtype == torch.float32 for p in report.parameters)
    assert "float32; tolerance rtol=0.000345267, atol=0.000345267" in str(report)
    assert "fd_step=0.00492" in report.notes[-1]
    # Rounding shows, within the derived tolerances.
    assert 1e-12 < report.max_abs_error < SQRT_EPS32


def test_without_promotion_a_biased_float32_estimator_is_caught() -> None:
    policy = Policy()
    # Tolerances sqrt(eps) = 3.45e-4: the bias of normalized returns (3e-2) exceeds them by far.
    report = check_reinforce(reinforce(policy, biased=True), policy, promote=False, raise_exception=False)
    assert not report.ok
    assert report.max_abs_error > 10 * SQRT_EPS32


def test_without_promotion_looser_tolerances_given_are_kept() -> None:
    policy = Policy()
    # rtol=1e-2 and fd_step=1e-2 are coarser than float32's floors and stay; atol is raised to 3.45e-4.
    report = check_reinforce(reinforce(policy), policy, promote=False, rtol=1e-2, fd_step=1e-2)
    assert report.ok
    assert report.rtol == 1e-2 and report.atol == pytest.approx(SQRT_EPS32)
    assert "fd_step=0.01" in report.notes[-1]


def test_float64_parameters_are_not_promoted_and_keep_their_tolerances() -> None:
    policy = Policy(cast=torch.Tensor.double).double()
    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    report = check_reinforce(reinforce(policy), policy)
    assert report.ok and not report.promoted and report.precision == "float64"
    assert (report.rtol, report.atol) == (1e-6, 1e-9)
    assert report.notes == []
    assert "0.00 s, float64; tolerance" in str(report).replace(f"{report.seconds:.2f} s", "0.00 s")


def test_tolerances_resolvable_in_a_dtype_follow_its_machine_epsilon() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        eps = torch.finfo(dtype).eps
        floor = Tolerances.resolvable(dtype)
        assert floor == Tolerances(eps**0.5, eps**0.5, eps ** (1 / 3), eps**0.5, eps**0.5)
    given = Tolerances(rtol=1e-6, atol=1e-9, fd_step=1e-6, fd_rtol=1e-5, fd_atol=1e-7)
    assert choose_precision([torch.zeros(1, dtype=torch.float64)], [], promote=False).tolerances(given) == given


def test_promote_must_be_none_or_a_bool() -> None:
    policy = Policy()
    with pytest.raises(InvalidOptionError, match="promote must be None, True or False, not 'yes'"):
        check_reinforce(reinforce(policy), policy, promote="yes")  # type: ignore[arg-type]


# --- what the mode promotes ----------------------------------------------------------------------

_BUFFER32 = torch.zeros(3, dtype=torch.float32)
_NUMPY32 = np.array([1.0, 2.0, 3.0], dtype=np.float32)

CREATED = {
    ".float()": lambda: torch.ones(2).float(),
    ".half()": lambda: torch.ones(2).half(),
    ".bfloat16()": lambda: torch.ones(2).bfloat16(),
    ".to(torch.float32)": lambda: torch.ones(2).to(torch.float32),
    ".to(device, dtype=)": lambda: torch.ones(2).to("cpu", dtype=torch.float16),
    ".to(other)": lambda: torch.ones(2).to(_BUFFER32),
    ".type(torch.FloatTensor)": lambda: torch.ones(2).type(torch.FloatTensor),
    ".type('torch.HalfTensor')": lambda: torch.ones(2).type("torch.HalfTensor"),
    "torch.tensor(dtype=float32)": lambda: torch.tensor([0.1, 0.2], dtype=torch.float32),
    "torch.tensor(float32 numpy)": lambda: torch.tensor(_NUMPY32),
    "torch.zeros(dtype=float16)": lambda: torch.zeros(2, dtype=torch.float16),
    "torch.arange(dtype=bfloat16)": lambda: torch.arange(3, dtype=torch.bfloat16),
    "torch.as_tensor(float32 numpy)": lambda: torch.as_tensor(_NUMPY32),
    "torch.from_numpy(float32) at first use": lambda: torch.from_numpy(_NUMPY32) * 2,
    "torch.from_numpy(float32).float()": lambda: torch.from_numpy(_NUMPY32).float(),
    "default dtype": lambda: torch.tensor([0.1]),
    "float32 tensor made before": lambda: _BUFFER32 + 1,
    "torch.cat of float32": lambda: torch.cat([_BUFFER32, _BUFFER32]),
    "torch.max of float32": lambda: torch.max(_BUFFER32, 0).values,
    "softmax(dtype=float32)": lambda: torch.softmax(torch.ones(2), 0, dtype=torch.float32),
    "nn.Linear.float()": lambda: nn.Linear(2, 2).float().weight,
}


@pytest.mark.parametrize("make", CREATED.values(), ids=CREATED.keys())
def test_floating_tensors_the_episode_creates_or_casts_are_float64(make: Callable[[], torch.Tensor]) -> None:
    made: list[torch.Tensor] = []
    precision = choose_precision([torch.zeros(1, requires_grad=True)], [], promote=None)
    precision.episode(lambda: made.append(make()))()
    assert made[0].dtype == torch.float64


def test_values_keep_their_float32_rounding_or_gain_float64_precision() -> None:
    made: list[torch.Tensor] = []
    precision = choose_precision([torch.zeros(1, requires_grad=True)], [], promote=None)
    precision.episode(lambda: made.extend([torch.tensor([0.1], dtype=torch.float32), torch.from_numpy(_NUMPY32 / 10) + 0]))()
    assert made[0].item() == 0.1  # a Python float becomes float64 directly
    assert made[1][0].item() == float(np.float32(0.1))  # float32 data is widened as it is


def test_in_place_updates_of_a_float32_tensor_write_to_it_in_its_own_dtype() -> None:
    buffer = torch.zeros(3, dtype=torch.float32)
    out = torch.empty(3, dtype=torch.float32)
    results: list[torch.Tensor] = []

    def episode() -> None:
        results.append(buffer.add_(torch.ones(3)))
        buffer[0] = 5.0
        view = buffer  # Python's in-place operator on a name: Tensor.__iadd__
        view += 1.0
        results.append(torch.add(torch.ones(3), 1.0, out=out))

    precision = choose_precision([torch.zeros(1, requires_grad=True)], [], promote=None)
    precision.episode(episode)()
    assert results[0] is buffer and buffer.dtype == torch.float32
    assert buffer.tolist() == [6.0, 2.0, 2.0]
    assert results[1] is out and out.tolist() == [2.0, 2.0, 2.0]


def test_converting_a_module_inside_the_episode_leaves_its_tensors_as_they_were() -> None:
    frozen = nn.Linear(2, 2).requires_grad_(False)  # not checked, so not copied by the check
    frozen.weight.grad = torch.zeros(2, 2)
    weight, bits = frozen.weight, _bits(frozen.weight)
    outputs: list[torch.Tensor] = []

    def episode() -> None:
        frozen.float()  # Tensor.float() is .double() here, assigned to .data and .grad
        frozen.to(torch.float16)
        outputs.append(frozen(torch.ones(2)))

    precision = choose_precision([torch.zeros(1, requires_grad=True)], [], promote=None)
    precision.episode(episode)()
    assert frozen.weight is weight and weight.dtype == torch.float32 and torch.equal(_bits(weight), bits)
    assert weight.grad is not None and weight.grad.dtype == torch.float32
    assert outputs[0].dtype == torch.float64


def test_the_checks_own_code_runs_unpromoted_inside_an_episode_call() -> None:
    seen: dict[str, Any] = {}

    def episode() -> None:
        seen["promoting"] = promoting()
        seen["inside"] = (torch.get_default_dtype(), torch.zeros(1, dtype=torch.float32).dtype)
        with unpromoted():
            seen["unpromoted"] = (torch.get_default_dtype(), torch.zeros(1, dtype=torch.float32).dtype)
        seen["after"] = torch.get_default_dtype()

    precision = choose_precision([torch.zeros(1, requires_grad=True)], [], promote=None)
    default = torch.get_default_dtype()
    precision.episode(episode)()
    assert seen == {
        "promoting": True,
        "inside": (torch.float64, torch.float64),
        "unpromoted": (default, torch.float32),
        "after": torch.float64,
    }
    assert not promoting() and torch.get_default_dtype() == default


def test_a_float64_check_pushes_no_mode() -> None:
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    seen: list[bool] = []

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(torch._C._is_torch_function_mode_enabled() or promoting())
        dist = Categorical(logits=theta)
        action = dist.sample()
        reward = action.double()
        return reward, -dist.log_prob(action) * reward

    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    assert check_reinforce(episode, {"theta": theta}).ok
    assert seen and not any(seen)


# --- command line --------------------------------------------------------------------------------

FACTORY = '''
import numpy as np
import torch


def make():
    policy = torch.nn.Linear(2, 3)  # float32
    obs = np.array([0.5, -1.0], dtype=np.float32)

    def episode():
        dist = torch.distributions.Categorical(logits=policy(torch.from_numpy(obs).float()))
        action = dist.sample()
        reward = action.float()
        return reward, -dist.log_prob(action) * reward

    return episode, policy
'''


@pytest.mark.parametrize(("flag", "precision"), [([], "float64"), (["--no-promote"], "float32")])
def test_the_command_line_passes_promote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str], precision: str
) -> None:
    (tmp_path / "float32_policy.py").write_text(FACTORY)
    # The library's tolerances: float64 defaults when promoted, sqrt(eps) of float32 without.
    code = main([f"{tmp_path / 'float32_policy.py'}:make", "--json", *flag])
    data = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert (data["precision"], data["promoted"]) == (precision, not flag)


def test_the_samplers_chooser_runs_unpromoted(monkeypatch: pytest.MonkeyPatch) -> None:
    from reinforce_check import patching

    seen: list[tuple[bool, torch.dtype]] = []
    choose = patching._choose_on_cpu

    def spy(*args: Any) -> torch.Tensor:
        seen.append((torch._C._is_torch_function_mode_enabled(), torch.get_default_dtype()))
        return choose(*args)

    monkeypatch.setattr(patching, "_choose_on_cpu", spy)
    default = torch.get_default_dtype()
    policy = Policy()
    # Default float64 tolerances: rtol=1e-6, atol=1e-9.
    assert check_reinforce(reinforce(policy), policy).ok
    assert seen and set(seen) == {(False, default)}


NUMPY_DRAWS = {
    "numpy.random.choice": lambda probs: int(np.random.choice(3, p=probs.detach().numpy())),
    "random.choices(tensor weights)": lambda probs: random.choices(range(3), weights=probs)[0],
}


@pytest.mark.parametrize("draw", NUMPY_DRAWS.values(), ids=NUMPY_DRAWS.keys())
def test_numpy_and_random_samplers_in_a_promoted_episode_see_float64_probabilities(
    draw: Callable[[torch.Tensor], int],
) -> None:
    policy = Policy()
    seen: list[torch.dtype] = []

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        probs = policy(OBS[0])
        seen.append(probs.dtype)
        action = draw(probs)
        reward = torch.tensor(REWARD[0], dtype=torch.float32)[action]
        return reward, -torch.log(probs[action]) * reward

    # Default float64 tolerances (rtol=1e-6, atol=1e-9; fd_rtol=1e-5, fd_atol=1e-7 where central
    # differences decide, as they do for numpy's detached probabilities).
    report = check_reinforce(episode, policy)
    assert report.ok and report.promoted and report.num_sequences == 3
    assert set(seen) == {torch.float64}
