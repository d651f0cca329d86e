"""The choosers on their own: the scalar and tensor paths of a pass agree; the replayer of
sequential finite differences forces sequences and refuses what a replay must refuse."""

from __future__ import annotations

import math

import pytest
import torch

from reinforce_check import InvalidProbabilitiesError, NondeterministicEpisodeError
from reinforce_check.chooser import Plan, PrefixChooser, SequenceReplayer


class _TensorPath(PrefixChooser):
    """The same chooser, deciding every call with tensor operations (one decision per row: a column
    at a time)."""

    small_rows = 0


class _GeneralTensorPath(_TensorPath):
    """The same chooser, deciding every call with the general tensor path."""

    column_decisions = False


class _ScalarPath(PrefixChooser):
    """The same chooser, deciding every call in plain Python."""

    small_rows = 10**9
    small_decisions = 10**9


def _scenario(seed: int, rows: int = 24, slots: int = 4, num_actions: int = 3, known: bool = False, draws: int = 1):
    """A random plan (replayed, then speculated, then free slots) and random supports, the same for
    every ``draws`` consecutive slots (the draws of one call); with ``known``, a plan of known
    sequences (replayed up to a random required length, spawning nothing) instead."""
    generator = torch.Generator().manual_seed(seed)
    # Some seeds replay at least two slots of every row, so that every row is inside its path there.
    replayed_len = torch.randint(min(seed % 3, slots), slots + 1, (rows,), generator=generator)
    forced_len = torch.minimum(replayed_len + torch.randint(0, 3, (rows,), generator=generator), torch.tensor(slots))
    forced = torch.randint(0, num_actions, (rows, slots), generator=generator)
    forced = forced.masked_fill(torch.arange(slots)[None, :] >= forced_len[:, None], -1)
    canonical = torch.rand(rows, slots, generator=generator) < 0.6
    guessed = {s: torch.rand(num_actions, generator=generator) < 0.7 for s in range(slots)}
    weights = []
    for _ in range(slots):
        w = torch.rand(rows, num_actions, generator=generator, dtype=torch.float64)
        w = w.masked_fill(torch.rand(rows, num_actions, generator=generator) < 0.3, 0.0)
        w[:, 0] += (w.sum(1) == 0).double()  # at least one feasible action per row
        weights.append(w if len(weights) % draws == 0 else weights[-1])
    # Replayed slots take a feasible action, as they do in a real enumeration.
    for s in range(slots):
        replayed = s < replayed_len
        feasible = weights[s].gather(1, forced[:, s].clamp(min=0)[:, None]).squeeze(1) > 0
        fix = replayed & ~feasible
        forced[fix, s] = weights[s][fix].argmax(1)
    if known:
        return Plan.known(forced, forced_len, replayed_len), weights
    # The probabilities seen when the replayed slots were discovered: those the weights give them.
    replay_probs = torch.zeros(rows, slots, dtype=torch.float64)
    for s in range(slots):
        taken = weights[s].gather(1, forced[:, s].clamp(min=0)[:, None]).squeeze(1) / weights[s].sum(1)
        replay_probs[:, s] = torch.where(s < replayed_len, taken, 0.0)
    plan = Plan(forced, forced_len, replayed_len, replay_probs, guessed=guessed, canonical=canonical)
    return plan, weights


@pytest.mark.parametrize("known", [False, True], ids=["discovery", "known"])
@pytest.mark.parametrize("gradient", [True, False], ids=["gradient", "no-gradient"])
@pytest.mark.parametrize(("per_row", "draws"), [(1, 1), (1, 2), (2, 1)])
@pytest.mark.parametrize("seed", range(12))
def test_scalar_and_tensor_decisions_record_the_same_pass(seed, per_row, draws, gradient, known):
    plan, weights = _scenario(seed, rows=24 // per_row, slots=4 * per_row, known=known, draws=draws)
    results = []
    for cls in (_ScalarPath, _GeneralTensorPath, _TensorPath):
        chooser = cls(plan)
        for start in range(0, len(weights), per_row * draws):
            # per_row decisions of every episode in one call, episode first; with several draws, the
            # same weights for every draw (replacement=True).
            block = torch.stack(weights[start : start + per_row], dim=1).reshape(-1, weights[0].shape[1])
            chooser.choose(block.clone().requires_grad_(gradient), draws, True, "torch.multinomial")
        results.append(chooser.finish())
    scalar = results[0]
    for tensor in results[1:]:
        assert torch.equal(scalar.actions, tensor.actions)
        assert torch.equal(scalar.branching, tensor.branching)
        assert torch.equal(scalar.valid, tensor.valid)
        torch.testing.assert_close(scalar.probs, tensor.probs, rtol=1e-15, atol=0)
        torch.testing.assert_close(scalar.log_prob, tensor.log_prob, rtol=1e-14, atol=0)
        # The same prefixes, with probabilities equal to the last bit: both divide by the same totals.
        assert sorted(scalar.spawns) == sorted(tensor.spawns)
        assert scalar.calls_without_gradient == tensor.calls_without_gradient


def test_a_pass_log_probability_sums_the_logs_of_the_probabilities_it_took_with_gradient():
    chooser = PrefixChooser(Plan.free(rows=1))
    probs = torch.tensor([[0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        chooser.choose(probs, 1, True, "torch.multinomial")
    result = chooser.finish()
    assert float(result.log_prob.detach()) == pytest.approx(3 * math.log(0.5), abs=1e-15)
    (grad,) = torch.autograd.grad(result.log_prob.sum(), probs)
    # d/dp0 of 3 log(p0 / (p0 + p1)) at p = (0.5, 0.5).
    assert grad[0].tolist() == pytest.approx([3.0, -3.0])


def test_replayer_forces_each_sequence_and_keeps_its_log_probability():
    replayer = SequenceReplayer([[2, 0], [1]], [2, 1])
    weights = torch.tensor([[1.0, 1.0, 2.0]], dtype=torch.float64)
    replayer.start(0)
    assert replayer.choose(weights, 1, True, "site").tolist() == [[2]]
    assert replayer.choose(weights, 1, True, "site").tolist() == [[0]]
    replayer.finish()
    assert replayer.log_prob == pytest.approx(math.log(0.5) + math.log(0.25))
    replayer.start(1)
    assert replayer.choose(weights, 1, True, "site").tolist() == [[1]]
    replayer.finish()
    assert replayer.log_prob == pytest.approx(math.log(0.25))


def test_replayer_draws_without_replacement_as_the_enumeration_did():
    # Two rows, two draws each: slots run draw by draw, and a drawn action leaves its row.
    replayer = SequenceReplayer([[2, 0, 1, 1]], [4])
    weights = torch.tensor([[1.0, 1.0, 2.0], [1.0, 3.0, 0.0]], dtype=torch.float64)
    replayer.start(0)
    assert replayer.choose(weights, 2, False, "site").tolist() == [[2, 1], [0, 1]]
    replayer.finish()
    expected = math.log(2 / 4) + math.log(1 / 4) + math.log(1 / 2) + math.log(3 / 3)
    assert replayer.log_prob == pytest.approx(expected)


def test_replayer_takes_the_only_feasible_action_past_the_sequence():
    replayer = SequenceReplayer([[1]], [1])
    replayer.start(0)
    replayer.choose(torch.tensor([[0.5, 0.5]]), 1, True, "site")
    assert replayer.choose(torch.tensor([[0.0, 1.0]]), 1, True, "site").tolist() == [[1]]
    replayer.finish()
    assert replayer.log_prob == pytest.approx(math.log(0.5))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([[1.0, 0.0]], "probability zero"),
        ([[1.0]], "fewer actions"),
    ],
)
def test_replayer_refuses_an_infeasible_forced_action(weights, message):
    replayer = SequenceReplayer([[1]], [1])
    replayer.start(0)
    with pytest.raises(NondeterministicEpisodeError, match=message):
        replayer.choose(torch.tensor(weights), 1, True, "site")


def test_replayer_refuses_a_choice_past_the_sequence():
    replayer = SequenceReplayer([[1]], [1])
    replayer.start(0)
    replayer.choose(torch.tensor([[0.5, 0.5]]), 1, True, "site")
    with pytest.raises(NondeterministicEpisodeError, match="longer episode"):
        replayer.choose(torch.tensor([[0.5, 0.5]]), 1, True, "site")


def test_replayer_refuses_a_run_that_stops_before_the_last_choice():
    replayer = SequenceReplayer([[1, 0]], [2])
    replayer.start(0)
    replayer.choose(torch.tensor([[0.5, 0.5]]), 1, True, "site")
    with pytest.raises(NondeterministicEpisodeError, match="shorter episode"):
        replayer.finish()


def test_replayer_refuses_invalid_probabilities_as_the_enumeration_does():
    replayer = SequenceReplayer([[0]], [1])
    replayer.start(0)
    with pytest.raises(InvalidProbabilitiesError, match="NaN or infinite"):
        replayer.choose(torch.tensor([[float("nan"), 1.0]]), 1, True, "site")
    with pytest.raises(InvalidProbabilitiesError, match="negative"):
        replayer.choose(torch.tensor([[-0.5, 1.0]]), 1, True, "site")
