"""The exact check of the whole RL-NTM: every task with every controller passes; bugs are caught."""

from __future__ import annotations

import pytest

from rlntm_demo.check import BUGS, CHECK_SIZES, check_model, tiny_instance
from rlntm_demo.config import CONTROLLERS
from rlntm_demo.tasks import TASKS


def check_passes(task_name: str, controller: str, step_impl: str) -> None:
    policy, baseline = check_model(task_name, controller, step_impl=step_impl)
    for report in (policy, baseline):
        assert report.ok, str(report)
        assert report.max_rel_error < 1e-8
        assert abs(report.total_probability - 1.0) < 1e-10
        assert 10 <= report.num_sequences <= 10_000
        # A component cut out of the model would pass vacuously: every tensor must matter to J.
        unused = [p.name for p in report.parameters if float(p.target.abs().max()) == 0]
        assert not unused, f"no exact gradient reaches {unused}"
    assert all(name.startswith("controller.") for name in (p.name for p in policy.parameters))
    assert all(name.startswith("baseline.") for name in (p.name for p in baseline.parameters))
    if TASKS[task_name].interfaces.memory:
        assert any("value_head" in p.name for p in policy.parameters)


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("task_name", list(TASKS))
def test_every_task_and_controller_passes_with_the_reference_step(task_name: str, controller: str) -> None:
    """The reference step defines the model (``test_reference.py`` holds the fast one equal to it)."""
    check_passes(task_name, controller, "reference")


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_the_fast_step_passes_too(controller: str) -> None:
    check_passes("forward-reverse", controller, "fast")


def test_check_sizes_cover_every_task() -> None:
    assert set(CHECK_SIZES) == set(TASKS)
    instance = tiny_instance("copy")
    assert instance.batch_size == 1 and int(instance.steps[0]) == int(instance.target_len[0]) + 1


# Which check each biased bug makes fail: (a) the policy, (b) the baseline LSTM.
BIASED = {
    "reward-to-go-off-by-one": (False, True),
    "missing-pathwise-term": (False, True),
    "baseline-leaks-into-controller": (False, True),
    "baseline-sees-current-action": (False, True),
    "baseline-not-detached": (True, False),
}


@pytest.mark.parametrize("bug", list(BIASED))
def test_biased_bugs_are_caught(bug: str) -> None:
    policy, baseline = check_model("reverse", "lstm", bug=bug)
    assert (policy.ok, baseline.ok) == BIASED[bug]
    failed = policy if not policy.ok else baseline
    assert failed.max_rel_error > 1e-3
    assert failed.top_sequences  # the sequences behind the bias are named


@pytest.mark.parametrize("bug", ["baseline-leaks-into-controller", "reward-to-go-off-by-one"])
def test_bugs_are_caught_with_memory(bug: str) -> None:
    policy, _ = check_model("forward-reverse", "direct", complexity=1, slack=1, bug=bug)
    assert not policy.ok
    # The leak reaches the memory writes too (the memory is part of the baseline's input).
    if bug == "baseline-leaks-into-controller":
        assert any(not p.ok for p in policy.parameters if "value_head" in p.name)


def test_total_return_with_baseline_is_unbiased_but_noisier() -> None:
    """Not a bug: rewards before step t do not depend on the actions of step t, nor does b_t.

    So the whole return in place of the reward-to-go leaves the expected gradient exactly right;
    only the variance of the estimate grows.
    """
    to_go, _ = check_model("reverse", "lstm", variance=True)
    total, total_baseline = check_model("reverse", "lstm", bug="total-return-with-baseline", variance=True)
    assert total.ok and total_baseline.ok
    variance = {
        name: sum(float(p.variance.sum()) for p in report.parameters if p.variance is not None)
        for name, report in (("to_go", to_go), ("total", total))
    }
    assert variance["total"] > 1.2 * variance["to_go"] > 0


@pytest.mark.parametrize("baseline", ["offline", "online", "none"])
def test_each_baseline_alone_is_unbiased(baseline: str) -> None:
    """The paper calls the offline baseline biased; exactly, it is not (b_t sees no action of step t)."""
    reports = check_model("repeat-copy", "direct", baseline=baseline)
    assert len(reports) == (2 if baseline == "offline" else 1)
    assert all(report.ok for report in reports)


def test_misuse() -> None:
    with pytest.raises(ValueError, match="unknown controller 'gru'; choose one of: lstm, direct, feedforward"):
        check_model("copy", "gru")
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of: copy"):
        check_model("nope", "lstm")
    with pytest.raises(ValueError, match="unknown bug"):
        check_model("copy", "lstm", bug="typo")
    assert set(BUGS) == set(BIASED) | {"total-return-with-baseline"}


def test_fitted_offline_baseline_stays_unbiased_and_cuts_the_variance() -> None:
    """Fit the baseline LSTM for a few steps: the policy check still passes, with far less variance."""
    import torch
    from reinforce_check import check_reinforce

    from rlntm_demo.check import tiny_model
    from rlntm_demo.objective import episode_losses

    instance = tiny_instance("reverse")
    model = tiny_model("reverse", "lstm", baseline="offline")
    assert model.baseline is not None

    def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        losses = episode_losses(model.run_episode(instance.select([0] * batch_size), all_steps=True))
        return losses.objective, losses.total

    def variance() -> float:
        report = check_reinforce(episode, model.policy_parameters(), batched=True, variance=True)
        return sum(float(p.variance.sum()) for p in report.parameters if p.variance is not None)

    before = variance()
    optimizer = torch.optim.Adam(model.baseline.parameters(), lr=0.05)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(60):
            loss = episode_losses(model.run_episode(instance.select([0] * 32))).baseline.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert variance() < 0.5 * before  # check_reinforce raised if the estimate were biased


def test_every_direct_access_gate_reaches_the_objective() -> None:
    policy, _ = check_model("forward-reverse", "direct")
    gates = next(p for p in policy.parameters if p.name.endswith("gate_head.weight"))
    assert bool((gates.target.abs().amax(dim=1) > 0).all()), gates.target


def test_an_instance_without_a_spare_step_is_refused() -> None:
    with pytest.raises(ValueError, match="slack must be at least 1"):
        check_model("copy", "lstm", slack=0)


def test_the_fast_presets_leave_one_out_objective_is_exact() -> None:
    """Two rollouts of one input, each baselined by the other's returns: unbiased, checked exactly
    (tolerance rtol 1e-6, atol 1e-9), for the policy and the baseline LSTM alike."""
    reports = check_model("reverse", "direct", complexity=1, rollouts=2)
    for report in reports:
        assert report.ok, str(report)
        assert report.num_sequences == 20**2  # the single-rollout tree, squared
    assert "2 rollouts with a leave-one-out baseline" in reports[0].notes[-1]


def test_a_group_mean_that_includes_the_rollout_itself_is_caught() -> None:
    """Centring each rollout's returns on the mean of the whole group (its own return included)
    makes the advantage depend on the rollout's actions: the check must fail (rtol 1e-6)."""
    import torch

    from reinforce_check import check_reinforce
    from rlntm_demo.check import tiny_model
    from rlntm_demo.objective import policy_surrogate, reward_to_go

    instance = tiny_instance("reverse", complexity=1)
    model = tiny_model("reverse", "direct", baseline="none")

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        rollout = model.run_episode(instance.select([0, 0]), all_steps=True)
        returns = reward_to_go(rollout.rewards, rollout.mask)
        advantages = (returns - returns.mean(0, keepdim=True)).detach()
        loss = policy_surrogate(rollout.log_probs, advantages, rollout.mask) - (rollout.rewards * rollout.mask).sum(1)
        return (rollout.rewards * rollout.mask).sum(1).mean(), loss.mean()

    # The bias shows in the comparison with autograd's exact gradient; finite differences of J would
    # only confirm that gradient, at the price of many more runs once the check fails.
    report = check_reinforce(episode, model.policy_parameters(), rtol=1e-6, atol=1e-9, raise_exception=False,
                             finite_differences="none")
    assert not report.ok


@pytest.mark.parametrize("task_name", ["reverse", "repeat-copy"])
def test_a_circular_input_is_exact(task_name: str) -> None:
    """The wrapping input head of the ``fast`` and ``authors`` presets (rtol 1e-6, atol 1e-9)."""
    reports = check_model(task_name, "direct", circular_input=True)
    for report in reports:
        assert report.ok, str(report)
    assert "circular input" in reports[0].notes[-1]


def test_the_entropy_bonus_is_exact() -> None:
    """The bonus -beta log p(a_t) reinforced through the returns, its own pathwise term left out:
    exactly the gradient of J + beta H (rtol 1e-6, atol 1e-9), alone and with the leave-one-out
    baseline of the ``fast`` preset."""
    for reports in (check_model("reverse", "direct", entropy_bonus=0.3),
                    check_model("copy", "lstm", complexity=1, rollouts=2, entropy_bonus=0.3)):
        for report in reports:
            assert report.ok, str(report)
        assert "entropy bonus 0.3" in reports[0].notes[-1]


def test_an_entropy_bonus_left_out_of_the_returns_is_caught() -> None:
    """Maximizing J + beta H with a loss that ignores the bonus is biased: the check fails (rtol 1e-6)."""
    import torch

    from reinforce_check import check_reinforce
    from rlntm_demo.check import tiny_model
    from rlntm_demo.config import ObjectiveConfig
    from rlntm_demo.objective import episode_losses

    instance = tiny_instance("reverse")
    model = tiny_model("reverse", "direct", baseline="none")

    def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rollout = model.run_episode(instance.select([0] * batch_size), all_steps=True)
        regularized = episode_losses(rollout, ObjectiveConfig(entropy_bonus=0.3))
        plain = episode_losses(rollout)
        return regularized.objective + regularized.entropy, plain.total

    report = check_reinforce(episode, model.policy_parameters(), rtol=1e-6, atol=1e-9, batched=True,
                             raise_exception=False, finite_differences="none")
    assert not report.ok


# --- issue 19's options ------------------------------------------------------------------------


@pytest.mark.parametrize("step_impl", ["fast", "reference"])
@pytest.mark.parametrize("task_name,controller,options", [
    ("forward-reverse", "direct", {"shortcut_scale": 5.0}),
    ("reverse", "direct", {"shortcut_scale": 5.0}),
    ("forward-reverse", "direct", {"adjacent_memory": "off"}),
    ("forward-reverse", "direct", {"adjacent_memory": "closed", "shortcut_scale": 2.0}),
    ("forward-reverse", "direct", {"input_start_marker": True, "complexity": 1}),
    ("reverse", "lstm", {"input_start_marker": True}),
    ("repeat-copy", "feedforward", {"input_start_marker": True}),
    ("reverse", "direct", {"input_start_marker": True, "shortcut_scale": 5.0}),
    ("forward-reverse", "direct", {"memory_start_marker": True, "adjacent_memory": "off", "circular_input": True}),
    ("sort", "lstm", {"memory_start_marker": True}),
])
def test_every_model_option_is_exact(task_name: str, controller: str, options: dict[str, object],
                                     step_impl: str) -> None:
    """Each model option of issue 19 and the authors' initial memory, for the controllers it
    applies to, checked exactly (rtol 1e-6, atol 1e-9), the policy and the baseline LSTM alike;
    every parameter reaches J."""
    reports = check_model(task_name, controller, step_impl=step_impl, **options)  # type: ignore[arg-type]
    for report in reports:
        assert report.ok, str(report)
        unused = [p.name for p in report.parameters if float(p.target.abs().max()) == 0]
        assert not unused, f"no exact gradient reaches {unused}"
    names = [p.name for p in reports[0].parameters]
    assert ("controller.shortcut_scale_raw" in names) == ("shortcut_scale" in options and controller == "direct")
    for option in ("input_start_marker", "memory_start_marker"):
        if options.get(option):
            assert option.replace("_", " ") in reports[0].notes[-1]


@pytest.mark.parametrize("task_name,options,step_impl", [
    ("forward-reverse", {}, "fast"),
    ("forward-reverse", {}, "reference"),
    ("forward-reverse", {"shortcut_scale": 5.0, "memory_start_marker": True}, "fast"),
    ("reverse", {"input_start_marker": True}, "fast"),
])
def test_the_authors_direct_access_is_exact(task_name: str, options: dict[str, object], step_impl: str) -> None:
    """The authors' gates over the read window, on either step, checked exactly (rtol 1e-6, atol
    1e-9); every parameter reaches J, the window's side heads and pair gates included."""
    reports = check_model(task_name, "direct", step_impl=step_impl, direct_access="authors",
                          adjacent_memory="off", **options)  # type: ignore[arg-type]
    for report in reports:
        assert report.ok, str(report)
        unused = [p.name for p in report.parameters if float(p.target.abs().max()) == 0]
        assert not unused, f"no exact gradient reaches {unused}"
    names = {p.name for p in reports[0].parameters}
    assert ("controller.pair_gate_head.weight" in names) == (task_name == "forward-reverse")
    assert "the authors' direct access" in reports[0].notes[-1]


def test_the_shortcut_scale_starts_where_configured_and_adjacent_gates_come_and_go() -> None:
    from rlntm_demo.check import tiny_model
    from rlntm_demo.controllers import DirectAccessController

    model = tiny_model("forward-reverse", "direct", shortcut_scale=5.0, adjacent_memory="closed")
    controller = model.controller
    assert isinstance(controller, DirectAccessController)
    assert controller.shortcut_scales is not None
    assert controller.shortcut_scales.tolist() == pytest.approx([5.0, 5.0], rel=1e-6)  # drawn in float32
    assert controller.gate_head.bias[1:3].tolist() == [-6.0, -6.0]
    assert controller.gate_head.out_features == 5
    off = tiny_model("forward-reverse", "direct", adjacent_memory="off").controller
    assert off.gate_head.out_features == 3 and off.shortcut_scale_raw is None  # type: ignore[union-attr]


@pytest.mark.parametrize("step_impl", ["fast", "reference"])
def test_the_per_step_entropy_term_is_exact(step_impl: str) -> None:
    """The loss term -beta sum_t H_t is the exact gradient of J + beta E_{p_theta0}[sum_t H_t(theta)]
    (rtol 1e-6, atol 1e-9; central differences of that J agree), with and without the
    leave-one-out baseline and the moving-average and LSTM baselines."""
    for reports in (check_model("forward-reverse", "direct", entropy_bonus=0.3, entropy_mode="per-step",
                                step_impl=step_impl),
                    check_model("reverse", "lstm", entropy_bonus=0.5, entropy_mode="per-step", step_impl=step_impl),
                    check_model("copy", "direct", complexity=1, rollouts=2, entropy_bonus=0.3,
                                entropy_mode="per-step", step_impl=step_impl)):
        for report in reports:
            assert report.ok, str(report)
        assert "per step" in reports[0].notes[-1]


def test_the_per_step_entropy_term_is_not_the_gradient_of_the_sequence_entropy() -> None:
    """The per-step term is not paid through the returns, so it is *not* the gradient of
    J + beta E_{p_theta}[sum_t H_t] with the visits differentiated too (what the bonus through the
    returns estimates): checked against that objective, it fails (rtol 1e-6)."""
    import torch

    from reinforce_check import check_reinforce
    from rlntm_demo.check import tiny_model
    from rlntm_demo.config import ObjectiveConfig
    from rlntm_demo.objective import episode_losses, step_entropies

    instance = tiny_instance("reverse")
    model = tiny_model("reverse", "direct", baseline="none")
    config = ObjectiveConfig(entropy_bonus=0.3, entropy_mode="per-step")

    def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rollout = model.run_episode(instance.select([0] * batch_size), all_steps=True)
        losses = episode_losses(rollout, config)
        assert rollout.decision_probs is not None
        entropy = 0.3 * step_entropies(rollout.decision_probs, rollout.mask).sum(1)
        return losses.objective + entropy, losses.total

    report = check_reinforce(episode, model.policy_parameters(), rtol=1e-6, atol=1e-9, batched=True,
                             raise_exception=False, finite_differences="none")
    assert not report.ok
