"""TRL: check ``GRPOTrainer``'s and ``RLOOTrainer``'s gradient step, on the trainer itself.

:func:`check_grpo` and :func:`check_rloo` take a TRL trainer and check, exactly, the gradient of
TRL's own loss at the model's parameters: one episode of the check is one call of the trainer's
own ``training_step`` on one generation batch (TRL generates the completions with the model's
``generate``, scores them with its reward functions, turns the rewards into advantages and builds
its loss), up to its ``backward``, whose loss is taken with :func:`~reinforce_check.step_loss`
(nothing is stepped). ``model.generate`` is marked with :func:`~reinforce_check.enumerate_actions`
for the check, so every completion is enumerated even though TRL samples under
``torch.no_grad()``. The objective is the trainer's own reward (the weighted sum of its reward
functions) averaged over the batch: times ``scale`` for GRPO; clipped as the trainer clips it, less
``beta`` times each completion's KL estimate, for RLOO.

TRL is imported by the trainer you pass, not by this module.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..check import Params, check_reinforce
from ..handlers import enumerate_actions
from ..report import CheckReport
from ..training_step import step_loss
from . import IntegrationError

__all__ = ["check_grpo", "check_rloo", "claimed_scale"]

_MISSING = object()
# Token-level losses that reduce to a mean over tokens when every completion has the full length.
_TOKEN_LEVEL = {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo"}
# What one training step changes on the trainer, put back after a check: plain attributes (the
# generation buffer, the step counters, the methods the check wraps) ...
_STEP_STATE = (
    "_buffered_inputs",
    "_step",
    "_current_train_step_time",
    "current_gradient_accumulation_steps",
    "_calculate_rewards",
    "_generate_and_score_completions",
)
# ... and the records it appends to, put back as deep copies.
_STEP_RECORDS = ("_metrics", "_logs")


def claimed_scale(trainer: Any) -> float:
    """The multiple of E[reward] a ``GRPOTrainer``'s loss claims as its objective.

    ``1 / max_completion_length`` for the token-level losses (what a mean over tokens, or
    ``dr_grpo``'s division by ``G * L``, makes of E[reward] when every completion has ``L`` tokens);
    ``1`` for ``luspo``, which sums each completion's tokens under a sequence-level ratio.

    Raises:
        IntegrationError: a ``loss_type`` whose objective is not known here.

    >>> from types import SimpleNamespace
    >>> claimed_scale(SimpleNamespace(loss_type="luspo"))
    1.0
    """
    loss_type = trainer.loss_type
    if loss_type == "luspo":
        return 1.0
    if loss_type in _TOKEN_LEVEL:
        return 1.0 / trainer.args.max_completion_length
    raise IntegrationError(
        f"check_grpo does not know the objective of loss_type={loss_type!r}; pass scale=."
    )


def check_grpo(
    trainer: Any,
    prompts: Sequence[dict[str, Any]] | None = None,
    *,
    scale: float | None = None,
    params: Params | None = None,
    **options: Any,
) -> CheckReport:
    r"""Check a TRL ``GRPOTrainer``'s first gradient step against the objective its loss claims.

    Arguments:
        trainer: a ``GRPOTrainer`` whose one generation batch is one step
            (``steps_per_generation == 1``, ``num_iterations == 1``), on one process, without vLLM.
        prompts: the generation batch, as TRL's sampler hands it to ``training_step``: each prompt
            example repeated ``num_generations`` times in a row. Default: the first
            ``generation_batch_size / num_generations`` examples of ``trainer.train_dataset``.
        scale: the objective is ``scale`` times the expected mean reward of the batch's
            completions; default :func:`claimed_scale`. A group mean that includes a completion's
            own reward scales the expected gradient by :math:`(G-1)/G`: pass
            ``scale=(G - 1) / G * claimed_scale(trainer)`` to check that only this remains.
        params: the parameters to check (default: every parameter of ``trainer.model``).
        options: passed on to :func:`~reinforce_check.check_reinforce` (``rtol``, ``atol``,
            ``raise_exception``, ...).

    Returns:
        The :class:`~reinforce_check.CheckReport`. The trainer is as before afterwards, also when
        the check raises: its generation buffer, step counters, metrics and logs are put back, and
        the model's ``generate`` is unmarked.

    Raises:
        IntegrationError: not a ``GRPOTrainer``, or one that generates with vLLM, over several
            steps or iterations, or on several processes, or one with a KL penalty (``beta != 0``),
            whose per-token estimate has no objective to hold it to (see below).

    With ``beta != 0`` the loss adds, token by token, an estimate of the KL divergence from the
    reference model (with or without ``use_bias_correction_kl``). Its expected gradient is the
    gradient of each token's KL at its prefix, with the prefixes' own distribution held fixed: not
    the gradient of any objective of the completions, so no exact check can say it is right.
    ``check_grpo`` refuses such a trainer; ``beta=0.0``, TRL's default, checks the policy term.

    >>> check_grpo(object())
    Traceback (most recent call last):
    ...
    reinforce_check.integrations.IntegrationError: check_grpo takes a TRL GRPOTrainer; got object.
    """
    _require_trainer(trainer, "GRPOTrainer", "check_grpo")
    if trainer.beta != 0.0:
        raise IntegrationError(
            f"this GRPOTrainer has beta={trainer.beta:g}: its loss adds, token by token, an estimate of the KL "
            "divergence from the reference model, whose expected gradient leaves out how the earlier tokens' "
            "distribution depends on the parameters. It is not the gradient of any objective of the completions, "
            "so check_grpo has no exact objective to hold it to. Check the policy-gradient term with beta=0.0 "
            "(GRPOConfig(beta=0.0), TRL's default); RLOOTrainer puts its KL penalty in the reward, and "
            "check_rloo checks it."
        )
    objective_scale = claimed_scale(trainer) if scale is None else float(scale)

    def objective(step: _Step) -> torch.Tensor:
        return objective_scale * step.rewards(trainer).mean()

    return _check_step(trainer, prompts, objective, adapter="check_grpo", params=params, options=options)


def check_rloo(
    trainer: Any,
    prompts: Sequence[dict[str, Any]] | None = None,
    *,
    with_kl: bool = True,
    params: Params | None = None,
    **options: Any,
) -> CheckReport:
    r"""Check a TRL ``RLOOTrainer``'s first gradient step against the objective its loss claims.

    ``RLOOTrainer`` puts its KL penalty in the reward: a completion :math:`y` is rewarded with
    :math:`r(y) - \beta\,(\log\pi(y) - \log\pi_{ref}(y))`, the log-ratio summed over its tokens. Its
    loss is a sequence-level one (a completion's token log-probabilities summed, the mean taken over
    completions), so the objective it claims is
    :math:`E[r] - \beta\,\mathrm{KL}(\pi\,\|\,\pi_{ref})` itself, with no length normalization.
    The leave-one-out baseline of a completion is the mean penalized reward of the others in its
    group, independent of it, and leaves the expected gradient unchanged; ``normalize_advantages``
    and ``mask_truncated_completions`` change it. The check is of the first step of a generation
    batch, where the policy ratio is 1 and its clipping does not act.

    Arguments:
        trainer: an ``RLOOTrainer`` whose one generation batch is one step
            (``steps_per_generation == 1``, ``num_iterations == 1``), on one process, without vLLM,
            with text prompts.
        prompts: the generation batch, as TRL's sampler hands it to ``training_step``: each prompt
            example repeated ``num_generations`` times in a row. Default: the first
            ``generation_batch_size / num_generations`` examples of ``trainer.train_dataset``.
        with_kl: hold the loss to the objective with the KL penalty (the default, when
            ``beta != 0``); ``False`` holds it to the expected reward alone, to measure how far the
            penalty's gradient takes the loss from it.
        params: the parameters to check (default: every parameter of ``trainer.model``).
        options: passed on to :func:`~reinforce_check.check_reinforce` (``rtol``, ``atol``,
            ``raise_exception``, ...).

    Returns:
        The :class:`~reinforce_check.CheckReport`. The trainer is as before afterwards, also when
        the check raises: its generation buffer, step counters, metrics and logs are put back, and
        the model's ``generate`` is unmarked.

    Raises:
        IntegrationError: not an ``RLOOTrainer``, or one that generates with vLLM, over several
            steps or iterations, or on several processes, or a PEFT model with ``beta != 0``
            (whose reference is the model with its adapter off, which the check does not run).

    >>> check_rloo(object())
    Traceback (most recent call last):
    ...
    reinforce_check.integrations.IntegrationError: check_rloo takes a TRL RLOOTrainer; got object.
    """
    _require_trainer(trainer, "RLOOTrainer", "check_rloo")
    penalized = with_kl and trainer.beta != 0.0
    if penalized and trainer.ref_model is None:
        raise IntegrationError(
            "check_rloo computes the KL penalty with trainer.ref_model, which a PEFT model does not have; "
            "check with with_kl=False (against the expected reward alone) or with beta=0.0."
        )

    def objective(step: _Step) -> torch.Tensor:
        rewards = step.rewards(trainer)
        if trainer.reward_clip_range:
            rewards = rewards.clamp(*trainer.reward_clip_range)
        if penalized:
            rewards = rewards - trainer.beta * _sequence_kl(trainer, step.generated)
        return rewards.mean()

    return _check_step(trainer, prompts, objective, adapter="check_rloo", params=params, options=options)


@dataclass
class _Step:
    """What the trainer's last training step scored and generated, captured from its own calls."""

    per_function: torch.Tensor | None = None
    """The rewards of each reward function, ``(completions, functions)``."""
    generated: dict[str, Any] = field(default_factory=dict)
    """The generation batch ``_generate_and_score_completions`` returned."""

    def rewards(self, trainer: Any) -> torch.Tensor:
        """Each completion's reward as the trainer sums it: its reward functions weighted, a
        ``None`` (NaN) reward left out."""
        if self.per_function is None:
            raise IntegrationError("the trainer's training step scored no completion: it did not call _calculate_rewards.")
        weights = trainer.reward_weights.to(self.per_function.device, torch.float64)
        return (self.per_function.double() * weights).nansum(dim=1)


def _sequence_kl(trainer: Any, generated: dict[str, Any]) -> torch.Tensor:
    r"""Each completion's :math:`\log\pi(y) - \log\pi_{ref}(y)` over its tokens, the estimate of
    :math:`\mathrm{KL}(\pi\,\|\,\pi_{ref})` with which ``RLOOTrainer`` penalizes its reward, computed with
    the trainer's own method.

    Over every token of the completion, up to its first end-of-sequence token: the KL the trainer
    claims to penalize, whatever ``mask_truncated_completions`` makes of the penalty it applies.
    """
    completion_ids = generated["completion_ids"]
    is_end = torch.isin(completion_ids, torch.tensor(trainer.eos_token_ids, device=completion_ids.device))
    tokens = (is_end.long().cumsum(1) - is_end.long()) == 0  # no end-of-sequence token before
    input_ids = torch.cat([generated["prompt_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([generated["prompt_mask"], tokens.long()], dim=1)
    with torch.no_grad():
        policy, reference = (
            trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, completion_ids.size(1))[0]
            for model in (trainer.model, trainer.ref_model)
        )
    return ((policy - reference) * tokens).sum(1)


def _require_trainer(trainer: Any, name: str, adapter: str) -> None:
    """Refuse anything but TRL's trainer ``name`` (a subclass included), without importing TRL."""
    if not any(c.__name__ == name and c.__module__.startswith("trl.") for c in type(trainer).__mro__):
        raise IntegrationError(f"{adapter} takes a TRL {name}; got {type(trainer).__name__}.")


def _check_step(
    trainer: Any,
    prompts: Sequence[dict[str, Any]] | None,
    objective: Callable[[_Step], torch.Tensor],
    *,
    adapter: str,
    params: Params | None,
    options: dict[str, Any],
) -> CheckReport:
    """The check of one training step on one generation batch, against ``objective`` of what it
    scored and generated."""
    _require_one_step(trainer, adapter)
    batch = _generation_batch(trainer, prompts)
    model = trainer.model
    checked = dict(model.named_parameters()) if params is None else params
    step = _Step()

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        trainer._buffered_inputs, trainer._step = None, 0  # generate anew, as at the first step
        loss = step_loss(trainer.training_step, model, batch, None)
        return objective(step), loss

    with _capturing(trainer, step):
        return check_reinforce(episode, checked, **options)


def _require_one_step(trainer: Any, adapter: str) -> None:
    args = trainer.args
    if getattr(trainer, "use_vllm", False):
        raise IntegrationError(f"{adapter} cannot enumerate vLLM's sampling; set use_vllm=False.")
    if args.steps_per_generation != 1 or trainer.num_iterations != 1:
        raise IntegrationError(
            f"{adapter} checks one generation batch as one step: set steps_per_generation=1 (or "
            f"gradient_accumulation_steps=1) and num_iterations=1, not {args.steps_per_generation} and "
            f"{trainer.num_iterations}."
        )
    if trainer.accelerator.num_processes != 1:
        # The rewards are gathered from every process, the loss is this process's own.
        raise IntegrationError(
            f"{adapter} checks a trainer on one process, not {trainer.accelerator.num_processes}; "
            "run it without a distributed launcher."
        )


def _generation_batch(trainer: Any, prompts: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``prompts``, or the trainer's first prompts each repeated ``num_generations`` times, as its
    sampler hands them to ``training_step``."""
    group = trainer.num_generations
    if prompts is None:
        dataset = trainer.train_dataset
        count = trainer.args.generation_batch_size // group
        prompts = [dict(dataset[i]) for i in range(count) for _ in range(group)]
    batch = list(prompts)
    if not batch or len(batch) % group:
        raise IntegrationError(
            f"the batch must hold whole groups of num_generations={group} prompts, not {len(batch)}."
        )
    return batch


@contextlib.contextmanager
def _capturing(trainer: Any, step: _Step) -> Iterator[None]:
    """For the check: the trainer's rewards and generation batch captured into ``step``, its
    gradient accumulation set as ``Trainer.train()`` sets it before its first step, and its model's
    ``generate`` marked; afterwards, exceptions included, the trainer and model as they were."""
    model = trainer.model
    saved = {name: trainer.__dict__.get(name, _MISSING) for name in _STEP_STATE}
    records = {name: copy.deepcopy(trainer.__dict__[name]) for name in _STEP_RECORDS if name in trainer.__dict__}
    saved_generate = model.__dict__.get("generate", _MISSING)
    was_training = model.training
    own_rewards, own_generation = trainer._calculate_rewards, trainer._generate_and_score_completions

    def calculate_rewards(*args: Any, **kwargs: Any) -> torch.Tensor:
        step.per_function = own_rewards(*args, **kwargs)
        return step.per_function

    def generate_and_score(*args: Any, **kwargs: Any) -> dict[str, Any]:
        step.generated = own_generation(*args, **kwargs)
        return step.generated

    try:
        trainer._calculate_rewards = calculate_rewards
        trainer._generate_and_score_completions = generate_and_score
        trainer.current_gradient_accumulation_steps = 1
        model.generate = enumerate_actions(model.generate)
        yield
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                trainer.__dict__.pop(name, None)
            else:
                setattr(trainer, name, value)
        for name, value in records.items():
            setattr(trainer, name, value)
        if saved_generate is _MISSING:
            model.__dict__.pop("generate", None)
        else:
            model.generate = saved_generate
        model.train(was_training)
