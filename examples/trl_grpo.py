"""How far is TRL's GRPO loss, for each ``loss_type`` and ``scale_rewards``, from the gradient it claims?

One episode of the check is one batch of TRL's own ``GRPOTrainer``: its ``training_step`` generates a
group of ``G = 2`` completions of one prompt with the trainer's own ``generate`` call, scores them with
the reward function, turns the rewards into advantages (``scale_rewards``), and builds the loss of its
``loss_type`` in ``compute_loss``; the loss its ``backward`` would differentiate is taken with
:func:`reinforce_check.step_loss` (nothing is stepped). The model is a random GPT-2 built from a config
(3 tokens ``a``, ``b``, ``<eos>``; the tokenizer is a ``tokenizers`` WordLevel model; both are built in
``examples/tiny_lm.py``), the completions have at most ``L = 2`` tokens, and the reward of a
completion is its number of ``a`` tokens. ``model.generate`` is marked with
:func:`reinforce_check.enumerate_actions`, so the check enumerates every completion of both group
members (73 sampled paths: a finished completion still draws its padded tokens until both finish) and
autograd gives the exact gradient of the objective.

The objective every row is held to is ``E[r] / L``: the expected reward of one completion, divided by
``max_completion_length``. Every token-level loss reduces to that when all completions have the full
length ``L`` (a mean over the group of a per-token mean, or a token sum over ``G * L`` tokens), and
``dr_grpo`` divides by ``G * L`` always. A second column checks against ``(G - 1) / G * E[r] / L``: a
group baseline that contains the completion's own reward scales the expected gradient by
``(G - 1) / G``, and only that departure remains where the loss passes it.

Run it with ``python examples/trl_grpo.py`` (``pip install -e ".[integrations]"``).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from typing import Any

import torch
from tiny_lm import (  # examples/tiny_lm.py, beside this script
    PROMPT,
    A,
    count_a,
    tiny_gpt2,
    tiny_tokenizer,
)

from reinforce_check import check_reinforce, enumerate_actions, step_loss
from reinforce_check.integrations import relative_bias

GROUP, LENGTH = 2, 2  # num_generations, max_completion_length
# The check's defaults. The backward of TRL's fused LM head, which accumulates its gradients in
# float32, runs in float64 in a check too, so the rows that pass do so to rounding in float64.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}
# Every loss type TRL 1.16 offers, with what it needs (luspo is a sequence-level loss).
LOSS_TYPES: dict[str, dict[str, Any]] = {
    "grpo": {},
    "bnpo": {},
    "dr_grpo": {},
    "dapo": {},
    # epsilon_high=5: the ScaleRL value TRL recommends for cispo; its default 0.2 caps every ratio at 0.2.
    "cispo": {"epsilon_high": 5.0},
    "sapo": {},
    "luspo": {"importance_sampling_level": "sequence"},
    "vespo": {},
}
SCALE_REWARDS = ("group", "batch", "none")
# The objective each loss claims, as a multiple of E[r]: the token-level losses average over tokens,
# which is E[r] / L when every completion has L tokens; luspo sums each completion's tokens under a
# sequence-level ratio and averages over the group, which is E[r].
CLAIMED_SCALE = {loss_type: 1.0 / LENGTH for loss_type in LOSS_TYPES} | {"luspo": 1.0}


def grpo_trainer(loss_type: str, scale_rewards: str, output_dir: str) -> Any:
    """TRL's GRPOTrainer on the tiny model: one generation batch is one group of G completions."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # transformers' own deprecation of a field TRL sets
        args = GRPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=GROUP,
            num_generations=GROUP,
            max_completion_length=LENGTH,
            loss_type=loss_type,
            scale_rewards=scale_rewards,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            **LOSS_TYPES[loss_type],
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=tiny_gpt2(),
            reward_funcs=count_a,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [PROMPT] * GROUP}),
            processing_class=tiny_tokenizer(),
        )
    trainer.current_gradient_accumulation_steps = (
        1  # what Trainer.train() sets before its first step
    )
    return trainer


def grpo_episode(trainer: Any, scale: float):
    """One batch of the trainer's own step: (scale * mean reward of the group, the loss it differentiates)."""
    model = trainer.model
    model.generate = enumerate_actions(
        model.generate
    )  # sampled under no_grad: marked, it records its graph
    generated: dict[str, Any] = {}
    own = trainer._generate_and_score_completions

    def generate_and_score(batch: Any) -> Any:
        generated["batch"] = own(batch)
        return generated["batch"]

    trainer._generate_and_score_completions = generate_and_score
    batch = [
        {"prompt": PROMPT} for _ in range(GROUP)
    ]  # what TRL's RepeatSampler hands the step

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        trainer._buffered_inputs, trainer._step = (
            None,
            0,
        )  # generate anew, as at the trainer's first step
        loss = step_loss(trainer.training_step, model, batch, None)
        completions = generated["batch"]
        live = completions["completion_mask"].bool()
        rewards = ((completions["completion_ids"] == A) & live).sum(1).double()
        return scale * rewards.mean(), loss

    return episode


def check(
    loss_type: str, scale_rewards: str, scale: float, output_dir: str
) -> tuple[Any, float]:
    trainer = grpo_trainer(loss_type, scale_rewards, output_dir)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_reinforce(
            grpo_episode(trainer, scale),
            dict(trainer.model.named_parameters()),
            raise_exception=False,
            top_sequences=0,
            **TOLERANCE,
        )
    return report, time.perf_counter() - start


def main() -> dict[tuple[str, str], dict[str, Any]]:
    import transformers

    transformers.logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    results: dict[tuple[str, str], dict[str, Any]] = {}
    header = (
        f"{'loss_type':<9} {'scale_rewards':<13} {'passes E[r]/L':<13} {'‖bias‖/‖grad J‖':>16} "
        f"{'passes (G-1)/G·E[r]/L':<22} {'‖bias‖/‖grad J‖':>16} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            for loss_type in LOSS_TYPES:
                for scale_rewards in SCALE_REWARDS:
                    claimed, claimed_seconds = check(
                        loss_type, scale_rewards, CLAIMED_SCALE[loss_type], output_dir
                    )
                    baseline, _ = check(
                        loss_type,
                        scale_rewards,
                        (GROUP - 1) / GROUP * CLAIMED_SCALE[loss_type],
                        output_dir,
                    )
                    figures = {
                        "ok": claimed.ok,
                        "relative_bias": relative_bias(claimed),
                        "ok_with_own_baseline": baseline.ok,
                        "relative_bias_with_own_baseline": relative_bias(baseline),
                        "num_sequences": claimed.num_sequences,
                        "ground_truth": claimed.ground_truth,
                        "seconds": claimed_seconds,
                    }
                    results[(loss_type, scale_rewards)] = figures
                    print(
                        f"{loss_type:<9} {scale_rewards:<13} {'yes' if claimed.ok else 'no':<13} "
                        f"{figures['relative_bias']:>16.4g} {'yes' if baseline.ok else 'no':<22} "
                        f"{figures['relative_bias_with_own_baseline']:>16.4g} {claimed_seconds:>8.2f}"
                    )
    finally:
        torch.set_num_threads(threads)
    sequences = {f["num_sequences"] for f in results.values()}
    print(f"\nG = {GROUP} completions of at most L = {LENGTH} tokens; every check enumerated "
          f"{', '.join(map(str, sorted(sequences)))} sampled paths")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
