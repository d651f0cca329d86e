"""TRL: check ``GRPOTrainer``'s gradient step, on the trainer itself.

:func:`check_grpo` takes a ``trl.GRPOTrainer`` and checks, exactly, the gradient of TRL's own loss
at the model's parameters: one episode of the check is one call of the trainer's own
``training_step`` on one generation batch (TRL generates the completions with the model's
``generate``, scores them with its reward functions, turns the rewards into advantages and builds
the loss of its ``loss_type``), up to its ``backward``, whose loss is taken with
:func:`~reinforce_check.step_loss` (nothing is stepped). ``model.generate`` is marked with
:func:`~reinforce_check.enumerate_actions` for the check, so every completion is enumerated even
though TRL samples under ``torch.no_grad()``. The objective is the trainer's own reward (the
weighted sum of its reward functions) averaged over the batch, times ``scale``.

TRL is imported by the trainer you pass, not by this module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from ..check import Params, check_reinforce
from ..handlers import enumerate_actions
from ..report import CheckReport
from ..training_step import step_loss
from . import IntegrationError

__all__ = ["check_grpo", "claimed_scale"]

_MISSING = object()
# Token-level losses that reduce to a mean over tokens when every completion has the full length.
_TOKEN_LEVEL = {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo"}


def claimed_scale(trainer: Any) -> float:
    """The multiple of E[reward] the trainer's loss claims as its objective.

    ``1 / max_completion_length`` for the token-level losses (what a mean over tokens, or
    ``dr_grpo``'s division by ``G * L``, makes of E[reward] when every completion has ``L`` tokens);
    ``1`` for ``luspo``, which sums each completion's tokens under a sequence-level ratio.
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
            (``steps_per_generation == 1``, ``num_iterations == 1``), without vLLM.
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
        The :class:`~reinforce_check.CheckReport`. The trainer is as before afterwards: its
        generation buffer, step counter and metrics are put back, and the model's ``generate``
        is unmarked.

    Raises:
        IntegrationError: the trainer generates with vLLM, or over several steps or iterations.
    """
    args = trainer.args
    if getattr(trainer, "use_vllm", False):
        raise IntegrationError(
            "check_grpo cannot enumerate vLLM's sampling; set use_vllm=False."
        )
    if args.steps_per_generation != 1 or trainer.num_iterations != 1:
        raise IntegrationError(
            "check_grpo checks one generation batch as one step: set steps_per_generation=1 (or "
            f"gradient_accumulation_steps=1) and num_iterations=1, not {args.steps_per_generation} and "
            f"{trainer.num_iterations}."
        )
    group = trainer.num_generations
    if prompts is None:
        dataset = trainer.train_dataset
        count = args.generation_batch_size // group
        prompts = [dict(dataset[i]) for i in range(count) for _ in range(group)]
    batch = list(prompts)
    if not batch or len(batch) % group:
        raise IntegrationError(
            f"the batch must hold whole groups of num_generations={group} prompts, not {len(batch)}."
        )
    objective_scale = claimed_scale(trainer) if scale is None else float(scale)
    model = trainer.model
    checked = dict(model.named_parameters()) if params is None else params

    saved = {
        name: trainer.__dict__.get(name, _MISSING)
        for name in (
            "_buffered_inputs",
            "_step",
            "current_gradient_accumulation_steps",
            "_calculate_rewards",
        )
    }
    saved_metrics = copy.deepcopy(getattr(trainer, "_metrics", None))
    saved_generate = model.__dict__.get("generate", _MISSING)
    was_training = model.training
    scored: dict[str, torch.Tensor] = {}
    own_rewards = trainer._calculate_rewards

    def calculate_rewards(*a: Any, **k: Any) -> torch.Tensor:
        per_function = own_rewards(*a, **k)
        scored["rewards"] = per_function
        return per_function

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        trainer._buffered_inputs, trainer._step = (
            None,
            0,
        )  # generate anew, as at the first step
        loss = step_loss(trainer.training_step, model, batch, None)
        weights = trainer.reward_weights.to(scored["rewards"].device, torch.float64)
        rewards = (scored["rewards"].double() * weights).nansum(dim=1)
        return objective_scale * rewards.mean(), loss

    try:
        trainer._calculate_rewards = calculate_rewards
        trainer.current_gradient_accumulation_steps = (
            1  # what Trainer.train() sets before its first step
        )
        model.generate = enumerate_actions(model.generate)
        return check_reinforce(episode, checked, **options)
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                trainer.__dict__.pop(name, None)
            else:
                setattr(trainer, name, value)
        if saved_metrics is not None:
            trainer._metrics = saved_metrics
        if saved_generate is _MISSING:
            model.__dict__.pop("generate", None)
        else:
            model.generate = saved_generate
        model.train(was_training)
