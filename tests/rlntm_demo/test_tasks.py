"""Tasks: shapes, targets, determinism, interfaces, registry."""

from __future__ import annotations

import pytest
import torch

from rlntm_demo.config import BLANK, EOS, FIRST_DATA_SYMBOL, PLUS, REPEAT_2, REPEAT_3
from rlntm_demo.tasks import TASKS, Batch, make_task


def expected_target(name: str, tape: list[int], base: int = 3) -> list[int]:
    """The target of an input, computed independently of the task classes."""
    assert tape[-1] == EOS
    body = tape[:-1]
    if name == "copy":
        out = body
    elif name == "duplicated-input":
        assert all(body[i] == body[i - i % 3] for i in range(len(body)))
        out = body[::3]
    elif name in ("reverse", "forward-reverse"):
        out = body[::-1]
    elif name in ("repeat-copy", "repeat-copy-forward"):
        m = {REPEAT_2: 2, REPEAT_3: 3}[body[0]]
        out = body[1:] * m
    elif name == "sort":
        out = sorted(body)
    elif name == "addition":
        split = body.index(PLUS)
        digits = lambda xs: sum((x - FIRST_DATA_SYMBOL) * base**i for i, x in enumerate(xs))  # noqa: E731
        total = digits(body[:split]) + digits(body[split + 1 :])
        out = [FIRST_DATA_SYMBOL + (total // base**i) % base for i in range(split + 1)]
    else:
        raise AssertionError(name)
    return out + [EOS]


@pytest.mark.parametrize("name", list(TASKS))
def test_targets_shapes_and_steps(name: str) -> None:
    task = make_task(name)
    batch = task.sample(complexity=4, batch_size=16, generator=torch.Generator().manual_seed(1))
    assert batch.batch_size == 16
    assert batch.input.dtype == batch.target.dtype == torch.long
    assert batch.input.shape[1] == int(batch.input_len.max())
    assert batch.target.shape[1] == int(batch.target_len.max())
    for row in range(16):
        tape = batch.input[row, : int(batch.input_len[row])].tolist()
        target = batch.target[row, : int(batch.target_len[row])].tolist()
        assert target == expected_target(name, tape)
        assert (batch.input[row, int(batch.input_len[row]) :] == BLANK).all()
        assert (batch.target[row, int(batch.target_len[row]) :] == BLANK).all()
        assert int(batch.steps[row]) == task.step_bound(len(tape), len(target)) >= len(target)
        data = [s for s in tape if s not in (EOS, PLUS, REPEAT_2, REPEAT_3)]
        assert all(FIRST_DATA_SYMBOL <= s < FIRST_DATA_SYMBOL + task.num_symbols for s in data)


@pytest.mark.parametrize("name", list(TASKS))
def test_same_seed_same_batch(name: str) -> None:
    task = make_task(name)
    a = task.sample(3, 8, torch.Generator().manual_seed(7))
    b = task.sample(3, 8, torch.Generator().manual_seed(7))
    c = task.sample(3, 8, torch.Generator().manual_seed(8))
    assert torch.equal(a.input, b.input) and torch.equal(a.target, b.target) and torch.equal(a.steps, b.steps)
    assert not torch.equal(a.input, c.input)


def test_fixed_seed_examples() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = make_task("copy", num_symbols=3).sample(2, 1, generator)
    tape = batch.input[0].tolist()
    assert tape[-1] == EOS and batch.target[0].tolist() == tape
    batch = make_task("addition").sample(2, 1, torch.Generator().manual_seed(0))
    # 2 digits each, base 3, little-endian: the target has 3 digits and EOS.
    assert batch.input.shape == (1, 6) and batch.target.shape == (1, 4)
    assert batch.input[0, 2] == PLUS


def test_lengths_per_complexity() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = {
        name: (int(b.input_len[0]), int(b.target_len[0]))
        for name, b in ((n, make_task(n, **({"repeats": (3,)} if "repeat" in n else {})).sample(5, 1, generator)) for n in TASKS)
    }
    assert lengths == {
        "copy": (6, 6),
        "duplicated-input": (16, 6),
        "reverse": (6, 6),
        "repeat-copy": (7, 16),
        "forward-reverse": (6, 6),
        "sort": (6, 6),
        "addition": (12, 7),
        "repeat-copy-forward": (7, 16),
    }


def test_interfaces_follow_table_2() -> None:
    free = {"copy", "duplicated-input", "reverse", "repeat-copy"}
    for name, cls in TASKS.items():
        spec = cls.interfaces
        if name in free:
            assert not spec.memory and not spec.forward_only_input
        elif name in ("forward-reverse", "repeat-copy-forward"):
            assert spec.memory and spec.forward_only_input
        else:
            assert spec.memory and not spec.forward_only_input


def test_unknown_task_lists_names() -> None:
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of: copy, duplicated-input"):
        make_task("nope")


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="num_symbols"):
        make_task("copy", num_symbols=31)
    with pytest.raises(ValueError, match="repeats"):
        make_task("repeat-copy", repeats=(4,))
    with pytest.raises(ValueError, match="complexity"):
        make_task("copy").sample(0, 1, torch.Generator())


def test_batch_select_and_with_steps() -> None:
    batch = make_task("reverse").sample(2, 3, torch.Generator().manual_seed(0))
    same = batch.select([1, 1])
    assert torch.equal(same.input[0], batch.input[1]) and torch.equal(same.input[1], batch.input[1])
    assert batch.with_steps(4).steps.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="too small"):
        batch.with_steps(2)
    with pytest.raises(ValueError, match="step bound"):
        Batch.from_lists([[2, EOS]], [[2, EOS]], [1])
