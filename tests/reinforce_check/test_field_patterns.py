"""The catalogue of policy-gradient code as the field writes it, each correct estimator passing and
each biased one caught: rollouts under ``torch.no_grad()`` with log-probabilities recomputed in the
loss, PPO's clipped surrogate at theta = theta_old, advantages normalized over the batch, sampling
temperature and top-k missing from the log-probability, GRPO's group normalization, per-sequence
token-mean length normalization, and a trainer that shuffles its minibatches.

The policy is a tiny language model: the next token's logits from the mean embedding of the tokens
so far. A completion has at most two new tokens from a vocabulary of three, token 2 ending it, so a
completion is one of 7 sequences; a group of two has 49.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from reinforce_check import ReinforceCheckError, UninterceptedRandomnessError, check_reinforce, enumerate_actions

VOCAB = 3
END = 2
START = 3  # the prompt's only token, outside the vocabulary a completion draws from
MAX_NEW = 2

# Autograd decides: rtol 1e-7, atol 1e-10. Central differences decide (no-gradient rollouts):
# fd_rtol 1e-5, fd_atol 1e-7.
AUTOGRAD = dict(rtol=1e-7, atol=1e-10)
NUMERIC = dict(fd_rtol=1e-5, fd_atol=1e-7)


class TinyLM(torch.nn.Module):
    """Next-token logits from the mean embedding of the tokens so far (seeded; float64 unless asked)."""

    def __init__(self, width: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB + 1, width, generator=generator).to(dtype))
        self.head = torch.nn.Parameter(torch.randn(VOCAB, width, generator=generator).to(dtype))
        self.bias = torch.nn.Parameter((0.3 * torch.randn(VOCAB, generator=generator)).to(dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed[tokens].mean(dim=1)) @ self.head.T + self.bias


@dataclass
class Sampling:
    """How the rollout turns logits into the distribution it samples from."""

    temperature: float = 1.0
    top_k: int | None = None

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        logits = raw / self.temperature
        if self.top_k is not None:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits


@dataclass
class Completions:
    tokens: torch.Tensor
    """``(group, MAX_NEW)`` new tokens; positions after the end are END."""
    mask: torch.Tensor
    """``(group, MAX_NEW)`` whether the position holds a generated token."""
    old_log_prob: torch.Tensor
    """``(group, MAX_NEW)`` the rollout's log-probability of each token (as the rollout computed it)."""

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


def generate(model: TinyLM, group: int, sampling: Sampling) -> Completions:
    """Sample ``group`` completions of the prompt, token by token, as a rollout does."""
    tokens = torch.full((group, 1), START)
    done = torch.zeros(group, dtype=torch.bool)
    new, masks, log_probs = [], [], []
    for _ in range(MAX_NEW):
        dist = Categorical(logits=sampling.logits(model(tokens)))
        # A finished completion has a single possible token, so it does not branch.
        forced = torch.nn.functional.one_hot(torch.full((group,), END), VOCAB).bool()
        dist = Categorical(logits=dist.logits.masked_fill(done[:, None] & ~forced, float("-inf")))
        token = dist.sample()
        masks.append(~done)
        log_probs.append(dist.log_prob(token))
        new.append(token)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        done = done | (token == END)
    return Completions(torch.stack(new, 1), torch.stack(masks, 1), torch.stack(log_probs, 1))


def token_log_probs(model: TinyLM, completions: Completions, sampling: Sampling) -> torch.Tensor:
    """``(group, MAX_NEW)`` log-probabilities of the completions' tokens, recomputed with gradient."""
    group = completions.tokens.shape[0]
    context = torch.full((group, 1), START)
    out = []
    for step in range(MAX_NEW):
        token = completions.tokens[:, step]
        out.append(torch.log_softmax(sampling.logits(model(context)), dim=-1).gather(1, token[:, None])[:, 0])
        context = torch.cat([context, token[:, None]], dim=1)
    return torch.stack(out, 1).where(completions.mask, torch.zeros((), dtype=torch.float64))


def reward(completions: Completions) -> torch.Tensor:
    """A deterministic score: 1 per token 0, minus 0.4 per token, plus 0.5 for ending early."""
    zeros = ((completions.tokens == 0) & completions.mask).sum(dim=1).double()
    ended = ((completions.tokens == END) & completions.mask).any(dim=1).double()
    return zeros - 0.4 * completions.lengths.double() + 0.5 * ended


Episode = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def ppo_episode(
    model: TinyLM, *, advantage: str = "return", group: int = 2, rollout_grad: bool = False, marked: bool = False
) -> Episode:
    """A PPO-style step: a rollout under no_grad (unless ``rollout_grad``), then the clipped surrogate
    recomputing the log-probabilities, at theta = theta_old. The objective is the group's mean return."""
    sampling = Sampling()
    sample = enumerate_actions(generate) if marked else generate

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(rollout_grad):
            completions = sample(model, group, sampling)
        returns = reward(completions)
        advantages = returns
        if advantage == "normalized over the batch":
            advantages = (returns - returns.mean()) / (returns.std() + 1e-8)
        new_log_prob = token_log_probs(model, completions, sampling).sum(dim=1)
        ratio = torch.exp(new_log_prob - completions.old_log_prob.sum(dim=1).detach())
        clipped = torch.clamp(ratio, 0.8, 1.2)
        loss = torch.max(-advantages * ratio, -advantages * clipped).mean()
        return returns.mean(), loss

    return episode


def test_no_grad_rollout_with_recomputed_log_probs_passes_on_central_differences():
    model = TinyLM()
    report = check_reinforce(ppo_episode(model), model, **NUMERIC)
    assert report.ok and report.num_sequences == 49
    assert report.ground_truth == "finite differences"
    assert any("torch.no_grad()" in note for note in report.notes)


def test_no_grad_rollout_with_advantages_normalized_over_the_batch_is_caught():
    model = TinyLM()
    with pytest.raises(ReinforceCheckError, match="REINFORCE gradient mismatch"):
        check_reinforce(ppo_episode(model, advantage="normalized over the batch"), model, **NUMERIC)


def test_ppo_clipped_surrogate_at_theta_old_passes_with_autograd_deciding():
    # The rollout keeps its gradient here, so the exact -grad J comes from autograd, element by element.
    model = TinyLM()
    report = check_reinforce(ppo_episode(model, rollout_grad=True), model, **AUTOGRAD)
    assert report.ok and report.ground_truth == "autograd"


def test_ppo_advantages_normalized_over_the_batch_are_caught_with_autograd_deciding():
    model = TinyLM()
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(ppo_episode(model, rollout_grad=True, advantage="normalized over the batch"), model, **AUTOGRAD)
    assert caught.value.report.ground_truth == "autograd"


def sampling_episode(model: TinyLM, rollout: Sampling, scored: Sampling) -> Episode:
    """REINFORCE on one completion sampled with ``rollout``, its log-probability taken with ``scored``."""

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        completions = generate(model, 1, rollout)
        returns = reward(completions)
        log_prob = token_log_probs(model, completions, scored).sum(dim=1)
        return returns[0], -(log_prob * returns)[0]

    return episode


@pytest.mark.parametrize(
    "rollout", [Sampling(temperature=0.7), Sampling(top_k=2), Sampling(temperature=1.5, top_k=2)], ids=repr
)
def test_log_prob_under_the_sampling_distribution_passes(rollout):
    model = TinyLM(seed=1)
    report = check_reinforce(sampling_episode(model, rollout, rollout), model, **AUTOGRAD)
    assert report.ok and report.ground_truth == "autograd"


@pytest.mark.parametrize("rollout", [Sampling(temperature=0.7), Sampling(top_k=2)], ids=repr)
def test_temperature_or_top_k_missing_from_the_log_prob_is_caught(rollout):
    model = TinyLM(seed=1)
    with pytest.raises(ReinforceCheckError, match="REINFORCE gradient mismatch"):
        check_reinforce(sampling_episode(model, rollout, Sampling()), model, **AUTOGRAD)


def group_episode(model: TinyLM, *, advantage: str, group: int = 2, length: str = "sum") -> Episode:
    """A GRPO/RLOO-style step on one prompt: ``group`` completions, advantages from the group's
    rewards, a per-sequence loss (token log-probabilities summed, or their mean over the sequence's
    tokens), averaged over the group. The objective is the group's mean reward."""
    sampling = Sampling()

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        completions = generate(model, group, sampling)
        rewards = reward(completions)
        if advantage == "group normalized":  # GRPO's default
            advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
        elif advantage == "group mean":  # GRPO without the std scaling
            advantages = rewards - rewards.mean()
        elif advantage == "leave one out":  # RLOO
            advantages = rewards - (rewards.sum() - rewards) / (group - 1)
        else:
            advantages = rewards
        log_probs = token_log_probs(model, completions, sampling)
        per_sequence = log_probs.sum(dim=1)
        if length == "token mean":
            per_sequence = per_sequence / completions.lengths
        elif length == "constant":  # divided by the longest possible completion, as the objective is
            per_sequence = per_sequence / MAX_NEW
        scale = 1.0 / MAX_NEW if length == "constant" else 1.0
        return scale * rewards.mean(), -(per_sequence * advantages).mean()

    return episode


def test_leave_one_out_group_baseline_passes():
    model = TinyLM(seed=2)
    report = check_reinforce(group_episode(model, advantage="leave one out"), model, **AUTOGRAD)
    assert report.ok and report.num_sequences == 7**2


@pytest.mark.parametrize("advantage", ["group normalized", "group mean"])
def test_grpo_group_normalization_is_caught(advantage):
    # The group's mean includes the sequence's own reward (a baseline that depends on the action), and
    # the std scaling reweights groups by their spread.
    model = TinyLM(seed=2)
    with pytest.raises(ReinforceCheckError, match="REINFORCE gradient mismatch"):
        check_reinforce(group_episode(model, advantage=advantage), model, **AUTOGRAD)


def test_token_mean_length_normalization_against_expected_reward_is_caught():
    model = TinyLM(seed=2)
    with pytest.raises(ReinforceCheckError, match="REINFORCE gradient mismatch"):
        check_reinforce(group_episode(model, advantage="leave one out", length="token mean"), model, **AUTOGRAD)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_lower_precision_language_model_is_checked_in_float64(dtype):
    # The model's own dtype is restored afterwards; the check ran promoted, at float64 tolerances.
    model = TinyLM(seed=2, dtype=dtype)
    report = check_reinforce(group_episode(model, advantage="leave one out"), model, **AUTOGRAD)
    assert report.ok and report.promoted
    with pytest.raises(ReinforceCheckError, match="REINFORCE gradient mismatch"):
        check_reinforce(group_episode(model, advantage="group normalized"), model, **AUTOGRAD)
    assert all(p.dtype == dtype for p in model.parameters())


def test_constant_length_normalization_matches_the_scaled_objective():
    model = TinyLM(seed=2)
    report = check_reinforce(group_episode(model, advantage="leave one out", length="constant"), model, **AUTOGRAD)
    assert report.ok


def shuffled_minibatch_episode(model: TinyLM, *, shuffle: str, marked: bool) -> Episode:
    """A trainer step that shuffles its rollout into minibatches (``torch.randperm`` or numpy's
    ``permutation``) and sums the minibatches' REINFORCE losses, each a mean over its completions."""
    sampling = Sampling()
    sample = enumerate_actions(generate) if marked else generate
    group, minibatch = 2, 1

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        completions = sample(model, group, sampling)
        returns = reward(completions)
        if shuffle == "torch":
            order = torch.randperm(group)
        else:
            order = torch.from_numpy(np.random.permutation(group))
        loss = torch.zeros((), dtype=torch.float64)
        for start in range(0, group, minibatch):
            rows = order[start : start + minibatch]
            log_prob = token_log_probs(model, Completions(*(t[rows] for t in vars(completions).values())), sampling)
            loss = loss - (log_prob.sum(dim=1) * returns[rows]).sum() / group
        return returns.mean(), loss

    return episode


@pytest.mark.parametrize("shuffle", ["torch", "numpy"])
def test_trainer_shuffling_minibatches_passes_when_the_sampling_function_is_marked(shuffle):
    model = TinyLM(seed=3)
    report = check_reinforce(shuffled_minibatch_episode(model, shuffle=shuffle, marked=True), model, **AUTOGRAD)
    assert report.ok and report.num_sequences == 49
    assert any("only draws inside it were enumerated" in note for note in report.notes)


@pytest.mark.parametrize("shuffle", ["torch", "numpy"])
def test_trainer_shuffling_minibatches_unmarked_is_refused_naming_enumerate_actions(shuffle):
    model = TinyLM(seed=3)
    with pytest.raises(UninterceptedRandomnessError, match="enumerate_actions"):
        check_reinforce(shuffled_minibatch_episode(model, shuffle=shuffle, marked=False), model, **AUTOGRAD)
