"""Which ground truth decides: autograd's -grad J, or central differences of the exact J when the
episode samples with gradient recording off (PPO and A2C rollouts under ``torch.no_grad()``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from reinforce_check import ReinforceCheckError, check_reinforce
from reinforce_check.exact import COORDINATE_LIMIT

FEATURES = torch.tensor([[1.0, -0.5], [0.25, 2.0]], dtype=torch.float64)
REWARD = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)
# Central differences of the exact J at step 1e-6 in float64 agree with the exact gradient to about 1e-9.
FD_RTOL, FD_ATOL = 1e-6, 1e-8


def make_policy() -> torch.nn.Linear:
    torch.manual_seed(3)
    return torch.nn.Linear(2, 3, dtype=torch.float64)


def rollout_episode(policy: torch.nn.Module, *, grad_off=torch.no_grad, sign: float = 1.0, normalize: bool = False):
    """Two steps, PPO style: the rollout samples without gradient, the loss recomputes log-probabilities.

    ``sign=-1`` flips the estimator; ``normalize`` divides the return by its own magnitude (biased).
    """

    def episode():
        actions = []
        with grad_off():
            for t in range(2):
                actions.append(Categorical(logits=policy(FEATURES[t])).sample())
        actions = [a.clone() for a in actions]  # ordinary tensors, also when made under inference_mode
        total = REWARD[0, actions[0]] + REWARD[1, actions[1]]
        log_prob = sum(Categorical(logits=policy(FEATURES[t])).log_prob(a) for t, a in enumerate(actions))
        weight = total / total.abs() if normalize else total
        return total, -sign * log_prob * weight

    return episode


@pytest.mark.parametrize("grad_off", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_unbiased_estimator_sampling_without_gradient_passes_by_finite_differences(grad_off):
    policy = make_policy()
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    report = check_reinforce(rollout_episode(policy, grad_off=grad_off), policy, fd_rtol=FD_RTOL, fd_atol=FD_ATOL)
    assert report.ok
    assert report.ground_truth == "finite differences"
    assert report.to_dict()["ground_truth"] == "finite differences"
    assert "ground truth: central differences of the exact J" in str(report)
    assert all(p.reference == "central differences" for p in report.parameters)
    # The reference is the numeric gradient, not autograd's zero: no infinite relative error.
    assert math.isfinite(report.max_rel_error)
    assert all(float(p.target.abs().max()) > 1e-3 for p in report.parameters)
    # The check leaves parameters, their .grad and the grad mode as it found them.
    for name, p in policy.named_parameters():
        assert torch.equal(p.detach(), before[name])
        assert p.grad is None
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("bug", ["sign", "normalize"])
def test_biased_estimator_sampling_under_no_grad_fails_naming_the_parameter(bug):
    policy = make_policy()
    episode = rollout_episode(policy, sign=-1.0 if bug == "sign" else 1.0, normalize=bug == "normalize")
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(episode, policy, fd_rtol=FD_RTOL, fd_atol=FD_ATOL)
    message = str(caught.value)
    assert "REINFORCE gradient mismatch" in message
    assert "Parameter 'weight'" in message
    assert "Ground truth: central differences of the exact J" in message
    report = caught.value.report
    assert report.ground_truth == "finite differences"
    assert not report.parameters[0].ok


def test_no_grad_sampling_in_batched_mode_is_decided_by_finite_differences():
    policy = make_policy()

    def episode(rows):
        with torch.no_grad():
            actions = [Categorical(logits=policy(FEATURES[t]).expand(rows, 3)).sample() for t in range(2)]
        total = REWARD[0, actions[0]] + REWARD[1, actions[1]]
        log_prob = sum(Categorical(logits=policy(FEATURES[t]).expand(rows, 3)).log_prob(a) for t, a in enumerate(actions))
        return total, -log_prob * total

    report = check_reinforce(episode, policy, batched=True, fd_rtol=FD_RTOL, fd_atol=FD_ATOL)
    assert report.ok and report.ground_truth == "finite differences"


def test_large_tensor_is_compared_along_a_random_direction():
    # A tensor above COORDINATE_LIMIT elements costs one direction (2 evaluations of J), not one per element.
    size = COORDINATE_LIMIT + 6
    theta = torch.linspace(-1, 1, 3 * size, dtype=torch.float64).reshape(3, size).requires_grad_()
    features = torch.linspace(0.5, -0.5, size, dtype=torch.float64)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    def episode(sign: float):
        def run():
            with torch.no_grad():
                action = Categorical(logits=theta @ features).sample()
            return reward[action], -sign * Categorical(logits=theta @ features).log_prob(action) * reward[action]

        return run

    report = check_reinforce(episode(1.0), {"theta": theta}, fd_rtol=FD_RTOL, fd_atol=FD_ATOL)
    assert report.ok
    assert report.parameters[0].reference == "central differences along a random direction"
    assert "0/1 direction" in str(report)
    with pytest.raises(ReinforceCheckError, match="Along a random unit direction") as caught:
        check_reinforce(episode(-1.0), {"theta": theta}, fd_rtol=FD_RTOL, fd_atol=FD_ATOL)
    assert caught.value.report.parameters[0].mismatches == 1


def test_policy_independent_of_parameters_keeps_autograd_as_ground_truth():
    # Probabilities that do not depend on the checked parameter carry no gradient, rightly: grad J is
    # all pathwise and autograd is exact, so it decides (rtol 1e-7, atol 1e-10 against it).
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    def episode():
        action = Categorical(probs=probs).sample()
        objective = scale * reward[action] - scale**2
        return objective, -objective

    report = check_reinforce(episode, {"scale": scale}, rtol=1e-7, atol=1e-10, finite_differences="none")
    assert report.ok and report.ground_truth == "autograd"
    # The cross-check ran even with finite_differences="none", and agreed.
    assert len(report.finite_differences) == 1 and report.finite_differences[0].ok
    assert report.parameters[0].reference == "autograd"
    assert "ground truth: autograd's -grad J" in str(report)


def test_batched_check_with_gradient_has_no_draws_without_gradient_note(make_param):
    # The batched runner's own discovery round runs without gradient; it is not the episode's doing.
    theta = make_param(3, seed=4)

    def episode(rows):
        dist = Categorical(logits=theta.expand(rows, 3))
        action = dist.sample()
        return REWARD[0, action], -dist.log_prob(action) * REWARD[0, action]

    report = check_reinforce(episode, {"theta": theta}, batched=True, rtol=1e-7, atol=1e-10)
    assert report.ok and report.ground_truth == "autograd"
    assert report.notes == []


def eight_tensor_episode(thetas, *, sampler_detaches: bool, loss_detaches: bool, extra_gradient: float = 0.0):
    """Eight tensors add up to the logits; tensor 5 may reach the sampler, the loss, or both detached."""
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    def logits(detach_t5):
        return sum(t.detach() if i == 5 and detach_t5 else t for i, t in enumerate(thetas))

    def episode():
        action = Categorical(logits=logits(sampler_detaches)).sample()
        log_prob = Categorical(logits=logits(loss_detaches)).log_prob(action)
        return reward[action], -log_prob * reward[action] + extra_gradient * thetas[5].sum()

    return episode


def test_probabilities_detached_with_gradient_on_let_central_differences_decide(make_param):
    # The sampler sees t5 detached (gradient recording on), the loss does not: the estimator is
    # unbiased, but autograd's -grad J misses t5's score term. The cross-check's first direction
    # shows autograd disagreeing, so central differences decide, every coordinate of each tensor
    # (fd_rtol 1e-5, fd_atol 1e-7), and the check passes.
    thetas = [make_param(3, seed=20 + i, scale=0.5) for i in range(8)]
    params = {f"t{i}": t for i, t in enumerate(thetas)}
    episode = eight_tensor_episode(thetas, sampler_detaches=True, loss_detaches=False)
    for mode in ("joint", "none"):
        report = check_reinforce(episode, params, finite_differences=mode, fd_rtol=1e-5, fd_atol=1e-7)
        assert report.ok and report.ground_truth == "finite differences"
        assert all(p.reference == "central differences" for p in report.parameters)
        assert any("disagreed with central differences of the exact J along 1 direction" in n for n in report.notes)
        # The sampler's logits still carry the other tensors' gradient: no call is without gradient.
        assert not any("carry no gradient" in n for n in report.notes)


def test_term_detached_from_sampler_and_loss_is_a_bias_found_by_central_differences(make_param):
    # t5 reaches both the sampler and the loss detached: J depends on it, the loss does not see it.
    # Central differences decide and name t5 alone (fd_rtol 1e-5, fd_atol 1e-7).
    thetas = [make_param(3, seed=20 + i, scale=0.5) for i in range(8)]
    episode = eight_tensor_episode(thetas, sampler_detaches=True, loss_detaches=True)
    report = check_reinforce(
        episode, {f"t{i}": t for i, t in enumerate(thetas)}, raise_exception=False, fd_rtol=1e-5, fd_atol=1e-7
    )
    assert not report.ok and report.ground_truth == "finite differences"
    assert [p.name for p in report.parameters if not p.ok] == ["t5"]


def test_joint_finite_differences_spend_one_direction_on_a_biased_estimate(make_param):
    # The loss adds a gradient on t5 alone: autograd agrees with central differences along the one
    # joint direction, so it decides, and the element-wise comparison names t5 (fd_rtol 1e-5,
    # fd_atol 1e-7; rtol 1e-6, atol 1e-9).
    thetas = [make_param(3, seed=20 + i, scale=0.5) for i in range(8)]
    episode = eight_tensor_episode(thetas, sampler_detaches=False, loss_detaches=False, extra_gradient=0.3)
    report = check_reinforce(
        episode, {f"t{i}": t for i, t in enumerate(thetas)}, raise_exception=False, fd_rtol=1e-5, fd_atol=1e-7
    )
    assert report.ground_truth == "autograd"
    assert [p.name for p in report.parameters if not p.ok] == ["t5"]
    assert [(c.label, c.autograd_ok, c.ok) for c in report.finite_differences] == [("all parameters", True, False)]

