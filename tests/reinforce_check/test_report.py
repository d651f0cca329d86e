"""The report: its table, the mismatch message, bias contributions, variance and finite differences."""

from __future__ import annotations

import re

import pytest
import torch
from torch.distributions import Categorical

from reinforce_check import (
    CheckReport,
    DirectionalCheck,
    ParameterReport,
    ReinforceCheckError,
    SequenceContribution,
    check_reinforce,
)
from reinforce_check.report import format_probability

REWARD = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)


def two_step_episode(policy: torch.Tensor, scale: torch.Tensor, *, bias: float = 0.0, scale_bias: float = 0.0):
    """Two steps of a 3-action policy; ``bias`` adds a biased term for ``policy`` (a log-prob weighted by
    the wrong reward) and ``scale_bias`` one for ``scale``."""

    def episode():
        total = torch.zeros((), dtype=torch.float64)
        log_prob = torch.zeros((), dtype=torch.float64)
        first = None
        for t in range(2):
            dist = Categorical(logits=policy[t] * scale)
            action = dist.sample()
            total = total + REWARD[t, action]
            log_prob = log_prob + dist.log_prob(action)
            first = action if first is None else first
        loss = -log_prob * total
        if bias:
            loss = loss - bias * torch.log_softmax(policy[0], -1)[first] * REWARD[1, first]
        if scale_bias:
            loss = loss - scale_bias * scale * REWARD[0, first]
        return total, loss

    return episode


@pytest.fixture
def params(make_param):
    return {"policy": make_param(2, 3, seed=70), "scale": torch.tensor(1.3, dtype=torch.float64, requires_grad=True)}


def test_passing_report_table_names_parameters_and_says_passed(params):
    report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10)
    assert isinstance(report, CheckReport)
    assert report.ok
    text = str(report)
    assert text.startswith("reinforce_check PASSED: 9 action sequences")
    assert "FAILED" not in text
    for name in params:
        assert re.search(rf"^{name}\s", text, flags=re.MULTILINE), f"no table row for {name}"
    assert "rtol=1e-07, atol=1e-10" in text
    assert "finite differences" in text
    assert "0/6" in text and "0/1" in text  # no mismatched elements in either tensor


def test_failing_report_table_says_failed_and_lists_sequences(params):
    report = check_reinforce(two_step_episode(**params, bias=0.5), params, rtol=1e-7, atol=1e-10, raise_exception=False)
    assert not report.ok
    text = str(report)
    assert text.startswith("reinforce_check FAILED")
    assert "PASSED" not in text
    assert "policy" in text and "scale" in text
    assert "sequences contributing most to the bias" in text
    assert "MISMATCH" in text


def test_report_fields_describe_the_comparison(params):
    report = check_reinforce(two_step_episode(**params, bias=0.5), params, rtol=1e-7, atol=1e-10, raise_exception=False)
    assert report.num_sequences == 9
    assert report.total_probability == pytest.approx(1.0, abs=1e-12)
    assert report.rtol == 1e-7 and report.atol == 1e-10
    assert report.seconds >= 0
    assert report.passes == 9 and report.rows_run == 9
    policy, scale = report.parameters
    assert isinstance(policy, ParameterReport)
    assert (policy.name, policy.shape, scale.name, scale.shape) == ("policy", (2, 3), "scale", ())
    torch.testing.assert_close(policy.bias, policy.estimate - policy.target)
    # Only the first step's logits get the biased term.
    assert policy.mismatches == 3 and not policy.ok
    assert scale.mismatches == 0 and scale.ok
    difference = (policy.estimate - policy.target).abs()
    assert policy.max_abs_error == pytest.approx(float(difference.max()))
    assert policy.worst_abs_index == tuple(int(i) for i in torch.unravel_index(difference.argmax(), (2, 3)))
    assert policy.worst_abs_index[0] == 0
    relative = difference / policy.target.abs()
    assert policy.max_rel_error == pytest.approx(float(relative.max()))
    assert report.max_abs_error == max(policy.max_abs_error, scale.max_abs_error)
    assert policy.variance is None and policy.numeric is None


def test_exact_objective_and_target_match_a_brute_force_sum(params):
    report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10)
    policy, scale = params["policy"], params["scale"]
    probs = torch.softmax(policy * scale, -1)
    objective = (probs * REWARD).sum()  # the two steps are independent
    grads = torch.autograd.grad(objective, [policy, scale])
    assert report.objective == pytest.approx(float(objective.detach()), abs=1e-12)
    torch.testing.assert_close(report.parameters[0].target, -grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(report.parameters[1].target, -grads[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(report.parameters[0].estimate, -grads[0], rtol=1e-10, atol=1e-12)


def test_mismatch_message_names_parameter_counts_and_tolerances(params):
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(two_step_episode(**params, bias=0.5), params, rtol=1e-7, atol=1e-10)
    message = str(caught.value)
    assert "REINFORCE gradient mismatch" in message
    assert "for 1 of 2 parameter tensors" in message
    assert "Parameter 'policy' (shape (2, 3)):" in message
    assert "Parameter 'scale'" not in message
    assert "Mismatched elements: 3 / 6 (50.0%)" in message
    assert "Greatest absolute difference:" in message
    assert "(up to 1e-10 allowed)" in message
    assert "Greatest relative difference:" in message
    assert "(up to 1e-07 allowed)" in message
    report = caught.value.report
    worst = report.parameters[0].worst_abs_index
    assert f"at index ({worst[0]}, {worst[1]})" in message
    assert "Enumerated 9 action sequences exactly" in message


def test_mismatch_message_lists_worst_parameter_first(params):
    episode = two_step_episode(**params, bias=0.01, scale_bias=5.0)
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(episode, params, rtol=1e-7, atol=1e-10)
    report = caught.value.report
    by_name = {p.name: p for p in report.parameters}
    assert by_name["scale"].max_rel_error > by_name["policy"].max_rel_error
    message = str(caught.value)
    assert "for 2 of 2 parameter tensors" in message
    assert message.index("Parameter 'scale' (shape ())") < message.index("Parameter 'policy' (shape (2, 3))")
    assert "at index ()" in message  # a 0-dimensional parameter


def test_top_sequences_empty_for_a_correct_estimator(params):
    report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10)
    assert report.top_sequences == []


def test_top_sequences_list_biggest_contributors_for_a_biased_estimator(params):
    report = check_reinforce(
        two_step_episode(**params, bias=0.5), params, rtol=1e-7, atol=1e-10, raise_exception=False, top_sequences=3
    )
    assert len(report.top_sequences) == 3
    assert all(isinstance(s, SequenceContribution) for s in report.top_sequences)
    contributions = [s.contribution for s in report.top_sequences]
    assert contributions == sorted(contributions, reverse=True)
    assert contributions[0] > 0
    for s in report.top_sequences:
        assert 0 < s.probability <= 1
        assert [site for site, _ in s.choices] == ["Categorical.sample", "Categorical.sample"]
        first, second = (action for _, action in s.choices)
        assert s.objective == pytest.approx(float(REWARD[0, first] + REWARD[1, second]))


def test_contributions_of_all_sequences_add_up_to_the_bias_norm(params):
    report = check_reinforce(
        two_step_episode(**params, bias=0.5), params, rtol=1e-7, atol=1e-10, raise_exception=False, top_sequences=100
    )
    assert len(report.top_sequences) == report.num_sequences == 9
    norm = sum(float((p.bias**2).sum()) for p in report.parameters) ** 0.5
    assert sum(s.contribution for s in report.top_sequences) == pytest.approx(norm, rel=1e-9)
    assert sum(s.probability for s in report.top_sequences) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("num_actions", [2, 3])
def test_variance_of_one_step_bandit_matches_hand_computation(make_param, num_actions):
    theta = make_param(num_actions, seed=71)
    reward = torch.tensor([1.5, -0.5, 0.75][:num_actions], dtype=torch.float64)

    def episode():
        dist = Categorical(logits=theta)
        action = dist.sample()
        return reward[action], -dist.log_prob(action) * reward[action]

    report = check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10, variance=True)

    # grad of -log p(a) R(a) with respect to the logits is -R(a) (e_a - p).
    p = torch.softmax(theta.detach(), -1)
    g = -reward[:, None] * (torch.eye(num_actions, dtype=torch.float64) - p[None, :])  # g[a] = gradient for action a
    mean = (p[:, None] * g).sum(0)
    second = (p[:, None] * g**2).sum(0)
    expected = second - mean**2
    torch.testing.assert_close(report.parameters[0].variance, expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(report.parameters[0].estimate, mean, rtol=1e-10, atol=1e-14)
    assert "variance sum" in str(report)


def test_variance_of_two_action_bandit_in_closed_form(make_param):
    theta = make_param(2, seed=72)
    r0, r1 = 2.0, -1.0
    reward = torch.tensor([r0, r1], dtype=torch.float64)

    def episode():
        dist = Categorical(logits=theta)
        action = dist.sample()
        return reward[action], -dist.log_prob(action) * reward[action]

    report = check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10, variance=True)
    p0, p1 = torch.softmax(theta.detach(), -1).tolist()
    # Component 0: g(0) = -r0 * (1 - p0) with probability p0, g(1) = r1 * p0 with probability p1.
    g0, g1 = -r0 * (1 - p0), r1 * p0
    var0 = p0 * g0**2 + p1 * g1**2 - (p0 * g0 + p1 * g1) ** 2
    # Component 1 is the negative of component 0 (softmax gradients sum to zero), same variance.
    expected = torch.tensor([var0, var0], dtype=torch.float64)
    torch.testing.assert_close(report.parameters[0].variance, expected, rtol=1e-10, atol=1e-14)
    assert var0 == pytest.approx(p0 * p1 * (p1 * r0 + p0 * r1) ** 2, rel=1e-12)


def test_variance_in_batched_mode_matches_sequential_mode(make_param):
    theta = make_param(2, 3, seed=73)

    def run(batched):
        def episode(*batch):
            rows = batch[0] if batched else 1
            total = torch.zeros(rows, dtype=torch.float64)
            log_prob = torch.zeros(rows, dtype=torch.float64)
            for t in range(2):
                dist = Categorical(logits=theta[t].expand(rows, 3))
                action = dist.sample()
                total = total + REWARD[t, action]
                log_prob = log_prob + dist.log_prob(action)
            loss = -log_prob * total
            return (total, loss) if batched else (total[0], loss[0])

        return check_reinforce(episode, {"theta": theta}, batched=batched, rtol=1e-7, atol=1e-10, variance=True)

    sequential, batched = run(False), run(True)
    assert sequential.parameters[0].variance is not None
    torch.testing.assert_close(batched.parameters[0].variance, sequential.parameters[0].variance, rtol=1e-10, atol=1e-14)


def test_default_finite_differences_use_one_joint_direction(params):
    report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10)
    assert len(report.finite_differences) == 1
    check = report.finite_differences[0]
    assert isinstance(check, DirectionalCheck)
    assert check.label == "all parameters"
    assert check.ok
    assert check.numeric == pytest.approx(check.autograd, rel=1e-5, abs=1e-7)
    assert check.estimate == pytest.approx(check.autograd, rel=1e-9, abs=1e-12)


def test_joint_finite_differences_verify_autograd_along_one_direction_when_the_estimate_is_biased(params):
    # The element-wise comparison names the biased tensors; the one direction only verifies -grad J.
    report = check_reinforce(
        two_step_episode(**params, bias=0.5), params, rtol=1e-7, atol=1e-10, raise_exception=False,
        finite_differences="joint",
    )
    assert [(c.label, c.autograd_ok) for c in report.finite_differences] == [("all parameters", True)]
    assert not report.ok and report.ground_truth == "autograd"


def test_tensor_finite_differences_check_every_tensor(params):
    report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10, finite_differences="tensor")
    assert [c.label for c in report.finite_differences] == ["policy", "scale"]
    assert all(c.ok for c in report.finite_differences)


def test_coordinate_finite_differences_fill_the_numeric_gradient(params):
    report = check_reinforce(
        two_step_episode(**params), params, rtol=1e-7, atol=1e-10, finite_differences="coordinate"
    )
    for p in report.parameters:
        assert p.numeric is not None
        torch.testing.assert_close(p.numeric, p.target, rtol=1e-5, atol=1e-7)
    assert [c.label for c in report.finite_differences] == ["policy (all 6 coordinates)", "scale (all 1 coordinates)"]


def test_no_finite_differences_when_switched_off(params):
    report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10, finite_differences="none")
    assert report.finite_differences == []
    assert report.ok


def test_finite_differences_leave_parameters_and_random_state_unchanged(params):
    before = {k: v.detach().clone() for k, v in params.items()}
    state = torch.get_rng_state()
    check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10, finite_differences="coordinate")
    for name, value in params.items():
        assert torch.equal(value.detach(), before[name])
        assert value.grad is None
    assert torch.equal(torch.get_rng_state(), state)


def test_detached_probabilities_are_caught_by_finite_differences(make_param):
    # Sampling from probabilities computed outside autograd's view, with a loss that ignores them:
    # the loss matches autograd's gradient of J (both miss the dependence), but J itself moves when
    # the parameter moves. Central differences decide, and find the bias (fd_rtol 1e-5, fd_atol 1e-7).
    theta = make_param(3, seed=74)
    reward = REWARD[0]

    def episode():
        with torch.no_grad():
            probs = torch.softmax(theta, -1)
        action = torch.multinomial(probs, 1)[0]
        return reward[action], torch.zeros((), dtype=torch.float64) + 0 * theta.sum()

    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(episode, {"theta": theta}, rtol=1e-7, atol=1e-10)
    report = caught.value.report
    assert report.ground_truth == "finite differences"
    assert report.parameters[0].mismatches == 3
    assert "central differences of the exact J" in str(caught.value)
    assert "torch.no_grad()" in str(caught.value)


def test_raise_exception_false_returns_the_same_report_the_error_carries(params):
    episode = two_step_episode(**params, bias=0.5)
    report = check_reinforce(episode, params, rtol=1e-7, atol=1e-10, raise_exception=False)
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(episode, params, rtol=1e-7, atol=1e-10)
    assert caught.value.report.ok is report.ok is False
    torch.testing.assert_close(caught.value.report.parameters[0].bias, report.parameters[0].bias)


@pytest.mark.parametrize(
    ("make_params", "names"),
    [
        (lambda policy, scale: {"first": policy, "second": scale}, ["first", "second"]),
        (lambda policy, scale: [policy, scale], ["param0", "param1"]),
        (lambda policy, scale: (t for t in (policy, scale)), ["param0", "param1"]),
        (lambda policy, scale: policy, ["param"]),
    ],
    ids=["mapping", "list", "generator", "tensor"],
)
def test_parameters_are_named_by_how_they_are_passed(params, make_params, names):
    report = check_reinforce(
        two_step_episode(**params), make_params(params["policy"], params["scale"]), rtol=1e-7, atol=1e-10
    )
    assert [p.name for p in report.parameters] == names
    for name in names:
        assert name in str(report)


def test_module_parameters_are_named_as_in_the_module(float64_default):
    policy = torch.nn.Linear(2, 3)
    features = torch.tensor([[1.0, 0.0], [0.5, -1.0]])

    def episode():
        total = torch.zeros(())
        log_prob = torch.zeros(())
        for t in range(2):
            dist = Categorical(logits=policy(features[t]))
            action = dist.sample()
            total = total + REWARD[t, action]
            log_prob = log_prob + dist.log_prob(action)
        return total, -log_prob * total

    report = check_reinforce(episode, policy, rtol=1e-7, atol=1e-10)
    assert [p.name for p in report.parameters] == ["weight", "bias"]
    assert [p.shape for p in report.parameters] == [(3, 2), (3,)]


def test_seed_chooses_the_finite_difference_direction(params):
    def run(seed):
        report = check_reinforce(two_step_episode(**params), params, rtol=1e-7, atol=1e-10, seed=seed)
        return report.finite_differences[0].numeric

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_batched_variance_with_an_episode_that_stops_when_every_row_is_done():
    # The batch loop runs until its longest row ends, so a sequence recorded in a long batch carries
    # forced decisions that a lone replay of it does not make.
    theta = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)

    def episode(rows):
        done = torch.zeros(rows, dtype=torch.bool)
        log_prob = torch.zeros(rows, dtype=torch.float64)
        total = torch.zeros(rows, dtype=torch.float64)
        step = 0
        while not bool(done.all()) and step < 3:
            logits = theta.expand(rows, 3).masked_fill(done[:, None] & (torch.arange(3) != 0), float("-inf"))
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            live = (~done).double()
            log_prob = log_prob + dist.log_prob(action) * live
            total = total + reward[action] * live
            done = done | (action == 2)
            step += 1
        return total, -log_prob * total

    report = check_reinforce(episode, {"theta": theta}, batched=True, variance=True, rtol=1e-9, atol=1e-12)
    sequential = check_reinforce(
        lambda: tuple(v[0] for v in episode(1)), {"theta": theta}, variance=True, rtol=1e-9, atol=1e-12
    )
    assert report.num_sequences == sequential.num_sequences == 1 + 2 + 4 * 3
    torch.testing.assert_close(report.parameters[0].variance, sequential.parameters[0].variance, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("total", "text"),
    [(1.0, "1 exactly"), (1.0 - 2**-53, "1 - 1.1e-16"), (1.0 + 2**-52, "1 + 2.2e-16")],
)
def test_total_probability_is_written_as_its_distance_from_one(total: float, text: str) -> None:
    assert format_probability(total) == text
