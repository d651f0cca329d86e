"""A tiny language model for checking TRL's trainers: nothing is downloaded.

A random GPT-2 built from a config over three tokens ``a``, ``b`` and ``<eos>``, without dropout (the
check replays every run exactly), its tokenizer (a ``tokenizers`` WordLevel model built here), the
one-token prompt ``a`` and a reward: a completion's number of ``a`` tokens. ``examples/trl_grpo.py``
and ``examples/trl_rloo.py`` build their trainers on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

TOKENS = {"a": 0, "b": 1, "<eos>": 2}
A, EOS = TOKENS["a"], TOKENS["<eos>"]
PROMPT = "a"


def tiny_tokenizer() -> Any:
    """A WordLevel tokenizer of the three tokens, built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(TOKENS, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<eos>",
        pad_token="<eos>",
        bos_token="<eos>",
    )


def tiny_gpt2(seed: int = 0) -> Any:
    """A random GPT-2 over the three tokens, its weights drawn with ``seed``, without dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(TOKENS), n_positions=8, n_embd=8, n_layer=1, n_head=2,
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def count_a(
    completions: list[str], completion_ids: list[list[int]], **kwargs: Any
) -> list[float]:
    """The reward: the number of ``a`` tokens in the completion."""
    return [float(sum(token == A for token in ids)) for ids in completion_ids]


@contextmanager
def quietly() -> Iterator[None]:
    """Without the warnings transformers and TRL give for a model this small and a CPU run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
