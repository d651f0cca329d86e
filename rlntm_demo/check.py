"""The exact gradient check of the whole RL-NTM, with ``reinforce_check``.

Section 5 of the paper: shrink the task until the action sequences can be listed, run the model
once on each of them, and compare the expected gradient of the loss with the exact gradient of
the expected objective. :func:`check_model` builds such a tiny float64 instance of a task with
every component switched on (memory, where the task has it; read windows of three cells; both
baselines, with a nonzero moving average; reward-to-go; the chosen controller) and runs two checks
in batched mode:

(a) **the policy**: parameters = the controller's, objective = ``sum_t r_t``, loss = the total
    loss of :func:`~rlntm_demo.objective.episode_losses`. Passing means REINFORCE, reward-to-go,
    both baselines and the pathwise term together give exactly ``-grad J``.
(b) **the baseline LSTM**: parameters = the baseline's, objective = ``-sum_t (R_t - b_t)^2``,
    loss = the same total loss. Passing means the baseline is trained on exactly the gradient of
    its expected squared error, and nothing else (no REINFORCE term leaks into it).

The tiny instance: ``num_symbols`` data symbols (2), complexity 1 or 2, the step bound set to
the number of targets plus ``slack`` (1 or 2, see :data:`CHECK_SIZES`), so the output decision is free at some steps (without that
freedom, a reward-to-go that leaves out the step's own reward would go unnoticed), 3 memory
cells, 3 hidden units. Weights are drawn N(0, 1) and the inverse temperature is 1, so that the
policy is far from uniform and every term of the gradient is large; RepeatCopy variants use m = 2.
Every instance has at most a few thousand action sequences.

**Deliberate bugs** (``bug=``, a name of :data:`rlntm_demo.bugs.BUGS`) show what the check
catches: each runs the check on a variant of the model or the loss with one function replaced
(:mod:`rlntm_demo.bugs` lists them, and what the check says about each).

>>> reports = check_model("copy", "lstm")
>>> [report.ok for report in reports]
[True, True]
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from reinforce_check import CheckReport, check_reinforce

from .bugs import BUGS, Bug
from .config import CONTROLLERS, ModelConfig, ObjectiveConfig
from . import reference
from .model import RLNTM, Rollout
from .objective import Losses, episode_losses, step_entropies
from .tasks import TASKS, Batch, make_task

__all__ = ["BUGS", "CHECK_SIZES", "CheckReport", "check_model", "frozen_prefix_ratios", "tiny_instance", "tiny_model"]



CHECK_SIZES: dict[str, tuple[int, int]] = {
    "copy": (2, 1),
    "duplicated-input": (2, 1),
    "reverse": (2, 1),
    "repeat-copy": (1, 2),
    "forward-reverse": (2, 1),
    "sort": (1, 2),
    "addition": (1, 1),
    "repeat-copy-forward": (1, 1),
}
"""Default ``(complexity, slack)`` of each task's check instance: as large as keeps the check to
about a second (from about 100 action sequences for copy to about 8,600 for addition)."""


def tiny_instance(
    task_name: str, *, seed: int = 0, complexity: int | None = None, num_symbols: int = 2, slack: int | None = None
) -> Batch:
    """One small instance of a task, as a batch of one row, with step bound ``len(target) + slack``.

    ``complexity`` and ``slack`` default to the task's entry in :data:`CHECK_SIZES`.

    Raises:
        ValueError: unknown task name (the message lists the valid ones).
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
    default_complexity, default_slack = CHECK_SIZES[task_name]
    complexity = default_complexity if complexity is None else complexity
    slack = default_slack if slack is None else slack
    if slack < 1:
        raise ValueError(
            f"slack must be at least 1, not {slack}: with no spare step every output decision is forced, "
            "so the output policy would not be checked at all."
        )
    options: dict[str, object] = {"num_symbols": num_symbols}
    if task_name in ("repeat-copy", "repeat-copy-forward"):
        options["repeats"] = (2,)
    task = make_task(task_name, **options)
    batch = task.sample(complexity, 1, torch.Generator().manual_seed(seed))
    return batch.with_steps(int(batch.target_len[0]) + slack)


def tiny_model(
    task_name: str, controller: str, *, seed: int = 0, baseline: str = "both", bug: str | None = None,
    circular_input: bool = False, step_impl: str = "fast", shortcut_scale: float | None = None,
    adjacent_memory: str = "open", input_start_marker: bool = False, memory_start_marker: bool = False,
    direct_access: str = "paper",
) -> RLNTM:
    """A float64 RL-NTM for :func:`tiny_instance`, every component on, weights N(0, 1).

    The moving-average baseline holds N(0, 1) values, so that it is exercised. ``bug`` names a
    deliberate bug of :data:`~rlntm_demo.bugs.BUGS`: the model is then its variant (the same
    weights).
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; choose one of: {', '.join(BUGS)}")
    config = ModelConfig(
        controller=controller,
        hidden_size=3,
        embedding_size=2,
        interfaces=TASKS[task_name].interfaces,
        memory_cells=3,
        read_window=1,
        inverse_temperature=1.0,
        init_std=1.0,
        baseline=baseline,
        baseline_hidden_size=3,
        max_steps=16,
        circular_input=circular_input,
        step_impl=step_impl,
        shortcut_scale=shortcut_scale,
        adjacent_memory=adjacent_memory,
        input_start_marker=input_start_marker,
        memory_start_marker=memory_start_marker,
        direct_access=direct_access,
    )
    generator = torch.Generator().manual_seed(seed)
    model = (RLNTM if bug is None else BUGS[bug].model)(config, generator=generator).double()
    with torch.no_grad():
        model.online_baseline.copy_(torch.randn(config.max_steps, generator=generator, dtype=torch.float64))
    return model


def _frozen_copy(model: RLNTM) -> RLNTM:
    """A copy of ``model`` with its current weights, which no gradient and no perturbation reaches."""
    frozen = copy.deepcopy(model)
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


def frozen_prefix_ratios(frozen: RLNTM, batch: Batch, rollout: Rollout) -> torch.Tensor:
    """``p_theta0(a_<t) / p_theta(a_<t)`` at every step: the probability of each episode's
    decisions before step t under the frozen weights theta0, over that under the live ones
    (differentiable through the latter). 1 in value wherever the two weights are equal.

    Weighting a per-step quantity ``f_t(theta)``, which depends on the decisions before step t
    only, by it turns the expectation over the live policy into one over the frozen policy:
    ``E_{a ~ p_theta}[sum_t f_t ratio_t] = E_{a ~ p_theta0}[sum_t f_t(theta)]``.

    Arguments:
        frozen: :func:`_frozen_copy` of the model, taken before any weight moved.
        batch: the instances the rollout ran on.
        rollout: the live model's rollout (its decisions are replayed by the frozen copy).

    Returns:
        (B, T).
    """
    with torch.no_grad():
        replay = reference.run_episode(frozen, batch.with_start_marker() if frozen.config.input_start_marker else batch,
                                       actions=rollout.actions)
    before = rollout.log_probs.sum(-1).cumsum(1) - rollout.log_probs.sum(-1)
    frozen_before = replay.log_probs.sum(-1).cumsum(1) - replay.log_probs.sum(-1)
    return torch.exp(frozen_before - before)


def check_model(
    task_name: str,
    controller: str,
    *,
    seed: int = 0,
    complexity: int | None = None,
    num_symbols: int = 2,
    slack: int | None = None,
    baseline: str = "both",
    bug: str | None = None,
    variance: bool = False,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_sequences: int = 20_000,
    rollouts: int = 1,
    entropy_bonus: float = 0.0,
    entropy_mode: str = "returns",
    circular_input: bool = False,
    step_impl: str = "fast",
    shortcut_scale: float | None = None,
    adjacent_memory: str = "open",
    input_start_marker: bool = False,
    memory_start_marker: bool = False,
    direct_access: str = "paper",
) -> list[CheckReport]:
    """Check the RL-NTM's gradient exactly on a tiny instance of a task.

    Arguments:
        task_name: a name of :data:`~rlntm_demo.tasks.TASKS`.
        controller: ``"lstm"``, ``"direct"`` or ``"feedforward"``.
        seed: draws the instance, the weights and the moving-average baseline.
        complexity: the instance's complexity (default: from :data:`CHECK_SIZES`; keep it at 1 or 2).
        num_symbols: data symbols the instance draws from (the base, for addition).
        slack: steps beyond the number of targets (default: from :data:`CHECK_SIZES`; at least 1,
            or the output decisions are all forced).
        baseline: ``"both"`` (default), ``"online"``, ``"offline"`` or ``"none"``; without the
            baseline LSTM only the policy is checked.
        bug: a name of :data:`~rlntm_demo.bugs.BUGS`, to see what the check says about it.
        variance: also compute the exact variance of the single-episode gradient estimate.
        rtol, atol: tolerances of the comparison.
        max_sequences: give up past this many action sequences.
        rollouts: rollouts of the instance per episode; with 2 or more, the loss adds the
            leave-one-out baseline of the ``fast`` preset (:func:`~rlntm_demo.objective.leave_one_out`)
            and the check runs in sequential mode on all the rollouts' decisions together (keep
            ``complexity`` at 1: the number of sequences is the single-rollout count to the power
            ``rollouts``).
        entropy_bonus: beta of :attr:`~rlntm_demo.config.ObjectiveConfig.entropy_bonus`; the
            policy check's objective is then ``sum_t r_t - beta sum_t log p(a_t)``.
        entropy_mode: :attr:`~rlntm_demo.config.ObjectiveConfig.entropy_mode`. With
            ``"per-step"``, the policy check's objective is ``sum_t r_t + beta sum_t H_t(theta)
            p_theta0(a_<t) / p_theta(a_<t)``: theta0 the weights at the start of the check, held
            by a frozen copy of the model that replays each episode's decisions
            (:func:`frozen_prefix_ratios`). Its expectation is ``J(theta) + beta E_{a ~
            p_theta0}[sum_t H_t(theta)]``, whose gradient at theta0, central differences
            included, is what the per-step term's loss estimates.
        circular_input: the input head wraps around (:attr:`~rlntm_demo.config.ModelConfig.circular_input`).
        step_impl: ``"fast"`` or ``"reference"`` (:attr:`~rlntm_demo.config.ModelConfig.step_impl`): the
            tests check the reference step, which defines the model, and hold the fast one equal to it.
        shortcut_scale, adjacent_memory, input_start_marker, memory_start_marker, direct_access: the model options
            of :class:`~rlntm_demo.config.ModelConfig` (issue 19), for the controllers and tasks
            they apply to.

    Returns:
        :class:`reinforce_check.CheckReport` (a) of the policy and (b) of the baseline LSTM (when
        there is one); each has ``ok``, and ``str(report)`` is a table. A note in each says which
        check it is.

    Raises:
        ValueError: unknown task, controller or bug (the message lists the valid names).
    """
    if controller not in CONTROLLERS:
        raise ValueError(f"unknown controller {controller!r}; choose one of: {', '.join(CONTROLLERS)}")
    if rollouts < 1:
        raise ValueError(f"rollouts must be at least 1, not {rollouts}")
    instance = tiny_instance(task_name, seed=seed, complexity=complexity, num_symbols=num_symbols, slack=slack)
    model = tiny_model(task_name, controller, seed=seed, baseline=baseline, bug=bug, circular_input=circular_input,
                       step_impl=step_impl, shortcut_scale=shortcut_scale, adjacent_memory=adjacent_memory,
                       input_start_marker=input_start_marker, memory_start_marker=memory_start_marker,
                       direct_access=direct_access)
    variant = BUGS[bug] if bug is not None else Bug("none", "production")
    objective_config = ObjectiveConfig(returns=variant.returns, entropy_bonus=entropy_bonus, entropy_mode=entropy_mode)
    per_step = entropy_mode == "per-step" and entropy_bonus > 0
    frozen = _frozen_copy(model) if per_step else None

    def make_episode(policy_check: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        def checked_objective(losses: Losses, rollout: Rollout, rows: Batch) -> torch.Tensor:
            if not policy_check:
                return -losses.baseline
            if frozen is None:
                return losses.objective + losses.entropy
            ratios = frozen_prefix_ratios(frozen, rows, rollout)
            entropies = entropy_bonus * step_entropies(rollout.decision_probs, rollout.mask)  # type: ignore[arg-type]
            return losses.objective + (entropies * ratios).sum(1)

        def episode(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
            rows = instance.select([0] * batch_size)
            rollout = model.run_episode(rows, all_steps=True)
            losses = episode_losses(rollout, objective_config, terms=variant.terms)
            return checked_objective(losses, rollout, rows), losses.total

        def group_episode() -> tuple[torch.Tensor, torch.Tensor]:
            # One episode of the check = `rollouts` rollouts of the instance; the estimate of the
            # gradient of the mean objective is the mean of their losses.
            rows = instance.select([0] * rollouts)
            rollout = model.run_episode(rows, all_steps=True)
            losses = episode_losses(rollout, objective_config, group_size=rollouts, terms=variant.terms)
            return checked_objective(losses, rollout, rows).mean(), losses.total.mean()

        return episode if rollouts == 1 else group_episode

    described = (
        f"task {task_name}, controller {controller}, input {instance.input[0].tolist()}, "
        f"target {instance.target[0].tolist()}, {int(instance.steps[0])} steps"
        + (f", {rollouts} rollouts with a leave-one-out baseline" if rollouts > 1 else "")
        + (", circular input" if circular_input else "")
        + (", reference step" if step_impl == "reference" else "")
        + (f", entropy bonus {entropy_bonus:g}" + (" per step" if per_step else "") if entropy_bonus else "")
        + (f", shortcut scale {shortcut_scale:g}" if shortcut_scale is not None and controller == "direct" else "")
        + (f", adjacent memory {adjacent_memory}" if adjacent_memory != "open" and controller == "direct" else "")
        + (", the authors' direct access" if direct_access == "authors" and controller == "direct" else "")
        + (", input start marker" if input_start_marker else "")
        + (", memory start marker" if memory_start_marker and model.config.interfaces.memory else "")
        + (f", deliberate bug {bug!r}" if bug else "")
    )
    policy_objective = "sum_t r_t - beta sum_t log p(a_t)" if entropy_bonus else "sum_t r_t"
    if per_step:
        policy_objective = "sum_t r_t + beta sum_t H_t p_theta0(a_<t) / p_theta(a_<t)"
    checks = [(True, model.policy_parameters(), f"(a) policy: objective {policy_objective}, loss = total loss")]
    if model.baseline is not None:
        checks.append(
            (False, model.baseline_parameters(), "(b) baseline LSTM: objective -sum_t (R_t - b_t)^2, loss = total loss")
        )
    reports = []
    for policy_check, params, what in checks:
        report = check_reinforce(
            make_episode(policy_check),
            params,
            rtol=rtol,
            atol=atol,
            max_sequences=max_sequences,
            batched=rollouts == 1,
            raise_exception=False,
            variance=variance,
            seed=seed,
        )
        report.notes.append(f"rlntm_demo check {what}; {described}")
        reports.append(report)
    return reports

