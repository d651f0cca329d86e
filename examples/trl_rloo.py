"""How far is TRL's RLOO loss, for each of its estimator settings, from the gradient it claims?

Each row checks TRL's own ``RLOOTrainer`` with :func:`reinforce_check.integrations.trl.check_rloo`:
one episode of the check is one call of the trainer's ``training_step``, which generates a group of
``G = 2`` completions of the prompt ``a`` with the model's own ``generate`` call, scores them (a
completion's reward is its number of ``a`` tokens), penalizes each reward with ``beta`` times its
KL estimate, subtracts the leave-one-out baseline and builds the loss its ``backward`` would
differentiate (nothing is stepped). The model is the random 3-token GPT-2 of ``examples/tiny_lm.py``;
the completions have at most ``L = 2`` tokens, which makes 73 sampled paths.

The policy is not its reference: the trainer loads its policy and its reference model from the GPT-2
drawn with seed 0, and the policy is then given the weights drawn with seed 1, as after some
training, so that the KL penalty has a gradient (at the reference both the KL and its gradient are
zero).

RLOO's loss is a sequence-level one (a completion's token log-probabilities summed, the mean taken
over completions): the objective it claims is ``E[r] - beta * KL(pi || pi_ref)`` itself, with the
reward clipped when ``reward_clip_range`` is set. Every setting is checked against that; the defaults
are also checked against ``E[r]`` alone (``with_kl=False``), to show the size of the penalty's share.

Run it with ``python examples/trl_rloo.py`` (``pip install -e ".[integrations]"``).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch
from tiny_lm import (  # examples/tiny_lm.py, beside this script
    PROMPT,
    count_a,
    quietly,
    tiny_gpt2,
    tiny_tokenizer,
)

from reinforce_check.integrations import relative_bias
from reinforce_check.integrations.trl import check_rloo

GROUP, LENGTH = 2, 2  # num_generations, max_completion_length
# The rows of the table: a setting of RLOOConfig that changes the estimator, on top of TRL 1.16's
# defaults (beta=0.05, normalize_advantages=False, mask_truncated_completions=False, no reward
# clipping), and whether the objective includes the KL penalty.
ROWS: list[tuple[str, dict[str, Any], bool]] = [
    ("defaults (beta=0.05)", {}, True),
    ("defaults (beta=0.05)", {}, False),
    ("beta=0", {"beta": 0.0}, True),
    ("normalize_advantages=True", {"normalize_advantages": True}, True),
    ("mask_truncated_completions=True", {"mask_truncated_completions": True}, True),
    ("reward_clip_range=(0, 1)", {"reward_clip_range": (0.0, 1.0)}, True),
]


def rloo_trainer(output_dir: str, **settings: Any) -> Any:
    """TRL's RLOOTrainer on the tiny model: one generation batch is one group of G completions; the
    policy's weights are drawn with seed 1, its reference's with seed 0."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    reference = os.path.join(output_dir, "reference")
    # The trainer loads the policy and its reference model from here.
    tiny_gpt2(seed=0).save_pretrained(reference)
    with quietly():
        args = RLOOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=GROUP,
            num_generations=GROUP,
            max_completion_length=LENGTH,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            **settings,
        )
        trainer = RLOOTrainer(
            model=reference,
            reward_funcs=count_a,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [PROMPT] * GROUP}),
            processing_class=tiny_tokenizer(),
        )
    trainer.model.load_state_dict(tiny_gpt2(seed=1).state_dict())
    return trainer


def objective(trainer: Any, with_kl: bool) -> str:
    """The objective ``check_rloo`` holds the trainer's loss to, as the table writes it."""
    reward = "E[clip(r)]" if trainer.reward_clip_range else "E[r]"
    return f"{reward} - β·KL" if with_kl and trainer.beta else reward


def main() -> dict[tuple[str, str], dict[str, Any]]:
    import transformers

    transformers.logging.set_verbosity_error()
    progress_bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.disable_progress_bar()  # saving and loading the tiny checkpoint
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    results: dict[tuple[str, str], dict[str, Any]] = {}
    header = f"{'setting':<32} {'objective':<17} {'passes':<6} {'‖bias‖/‖grad J‖':>16} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            for name, settings, with_kl in ROWS:
                trainer = rloo_trainer(output_dir, **settings)
                start = time.perf_counter()
                with quietly():  # the check's defaults: rtol=1e-6, atol=1e-9
                    report = check_rloo(
                        trainer, with_kl=with_kl, raise_exception=False, top_sequences=0
                    )
                seconds = time.perf_counter() - start
                held_to = objective(trainer, with_kl)
                figures = {
                    "ok": report.ok,
                    "relative_bias": relative_bias(report),
                    "seconds": seconds,
                    "num_sequences": report.num_sequences,
                    "ground_truth": report.ground_truth,
                }
                results[(name, held_to)] = figures
                print(
                    f"{name:<32} {held_to:<17} {'yes' if report.ok else 'no':<6} "
                    f"{figures['relative_bias']:>16.4g} {seconds:>8.2f}"
                )
    finally:
        torch.set_num_threads(threads)
        if progress_bars:
            transformers.logging.enable_progress_bar()
    sequences = {f["num_sequences"] for f in results.values()}
    print(f"\nG = {GROUP} completions of at most L = {LENGTH} tokens; every check enumerated "
          f"{', '.join(map(str, sorted(sequences)))} sampled paths")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
