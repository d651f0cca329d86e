"""The decision rule: its scalar and tensor forms agree, and it does what its docstring says."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reinforce_check.decision import decide, decide_rows


@st.composite
def decision_rows(draw):
    """Rows of a decision: a support with at least one feasible action, a forced action (-1 for
    free, possibly out of range or infeasible) and what other rows cover (None: spawns nothing)."""
    num_actions = draw(st.integers(1, 5))
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        weights = draw(st.lists(st.sampled_from([0.0, 0.25, 1.0, 3.5]), min_size=num_actions, max_size=num_actions))
        if not any(weights):
            weights[draw(st.integers(0, num_actions - 1))] = 1.0
        forced = draw(st.integers(-1, num_actions))
        covered = draw(st.none() | st.sets(st.integers(0, num_actions - 1)))
        rows.append((weights, forced, covered))
    return num_actions, rows


@settings(max_examples=200, deadline=None)
@given(case=decision_rows())
def test_scalar_and_tensor_rules_decide_alike(case):
    num_actions, rows = case
    support = torch.tensor([[w > 0 for w in weights] for weights, _, _ in rows])
    forced = torch.tensor([f for _, f, _ in rows])
    covered = torch.tensor(
        [[covered is None or k in covered for k in range(num_actions)] for _, _, covered in rows]
    )
    together = decide_rows(support, forced, covered)
    for index, (weights, f, c) in enumerate(rows):
        alone = decide(weights, f, c)
        assert alone.action == int(together.action[index])
        assert alone.failed == bool(together.failed[index])
        assert alone.branching == bool(together.branching[index])
        assert list(alone.alternatives) == together.alternatives[index].nonzero().flatten().tolist()


@settings(max_examples=200, deadline=None)
@given(case=decision_rows())
def test_a_row_takes_its_forced_action_when_feasible_and_else_the_first_feasible_one(case):
    _, rows = case
    for weights, forced, covered in rows:
        decision = decide(weights, forced, covered)
        feasible = [k for k, w in enumerate(weights) if w > 0]
        if forced in feasible:
            assert decision.action == forced and not decision.failed
        else:
            assert decision.action == feasible[0]
            assert decision.failed == (forced >= 0)
        # Spawns are feasible, never covered elsewhere, and never the action a valid row takes.
        assert set(decision.alternatives) <= set(feasible)
        if covered is None:
            assert decision.alternatives == ()
        else:
            assert not set(decision.alternatives) & set(covered)
            assert decision.failed or decision.action not in decision.alternatives
            assert set(decision.alternatives) | set(covered) | ({decision.action} - ({decision.action} if decision.failed else set())) >= set(feasible)


def test_a_free_row_spawns_every_other_feasible_action():
    assert decide([0.5, 0.0, 0.5, 1.0]).alternatives == (2, 3)
    assert decide([0.5, 0.0, 0.5, 1.0]).action == 0


def test_a_failed_guess_spawns_its_first_feasible_action_unless_covered():
    assert decide([0.0, 1.0, 1.0], forced=0, covered={0}).alternatives == (1, 2)
    assert decide([0.0, 1.0, 1.0], forced=0, covered={0, 1}).alternatives == (2,)


@settings(max_examples=200, deadline=None)
@given(case=decision_rows())
def test_the_all_forced_shortcut_decides_as_the_full_rule(case):
    num_actions, rows = case
    support = torch.tensor([[w > 0 for w in weights] for weights, _, _ in rows])
    # Every row forced to an action in range, feasible or not.
    forced = torch.tensor([max(f, 0) % num_actions for _, f, _ in rows])
    covered = torch.tensor([[c is None or k in c for k in range(num_actions)] for _, _, c in rows])
    full = decide_rows(support, forced, covered)
    short = decide_rows(support, forced, covered, all_forced=True)
    assert torch.equal(full.action, short.action)
    assert torch.equal(full.failed, short.failed)
    assert torch.equal(full.alternatives, short.alternatives)
    assert torch.equal(full.branching, short.branching)


@settings(max_examples=200, deadline=None)
@given(case=decision_rows(), all_forced=st.booleans(), branching=st.booleans(), spawning=st.booleans())
def test_the_tensor_rule_on_weights_decides_as_the_scalar_rule_and_keeps_the_weight_taken(
    case, all_forced, branching, spawning
):
    num_actions, rows = case
    weights = torch.tensor([w for w, _, _ in rows], dtype=torch.float64, requires_grad=True)
    # With all_forced, every row forced to an action in range, feasible or not.
    forced = [max(f, 0) % num_actions if all_forced else f for _, f, _ in rows]
    covered_sets = [c if spawning else None for _, _, c in rows]
    covered = None
    if spawning:
        covered = torch.tensor([[c is None or k in c for k in range(num_actions)] for c in covered_sets])
    together = decide_rows(weights, torch.tensor(forced), covered, all_forced=all_forced, branching=branching)
    assert together.weight.requires_grad
    assert (together.branching is None) == (not branching)
    assert (together.alternatives is None) == (not spawning)
    for index, ((w, _, _), f, c) in enumerate(zip(rows, forced, covered_sets)):
        alone = decide(w, f, c)
        assert alone.action == int(together.action[index])
        assert alone.failed == bool(together.failed[index])
        assert float(together.weight.detach()[index]) == w[alone.action]
        if branching:
            assert alone.branching == bool(together.branching[index])
        if spawning:
            assert list(alone.alternatives) == together.alternatives[index].nonzero().flatten().tolist()
    if together.none_failed:
        assert not bool(together.failed.any())
