"""Traces of the RL-NTM: the symbol characters, the text rendering and the Figure 7-style PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlntm_demo.config import BLANK, EOS, FIRST_DATA_SYMBOL, NUM_DATA_SYMBOLS, NUM_SYMBOLS, PLUS, REPEAT_2, REPEAT_3
from rlntm_demo.traces import (
    NO_PREDICTION_CHAR,
    SYMBOL_CHARS,
    Step,
    Trace,
    parse_symbols,
    render_figure,
    render_text,
    symbol_char,
    symbols_text,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def perfect_copy(text: str) -> Trace:
    """A perfect Copy episode: read one cell and predict it, every step, without memory."""
    symbols = parse_symbols(text)
    steps = [Step(position, None, position, symbol) for position, symbol in enumerate(symbols)]
    return Trace(symbols, list(symbols), steps)


def forward_reverse(text: str) -> Trace:
    """A ForwardReverse episode: move to the end writing memory, then emit from memory backwards.

    The input head stays on the end marker while the memory head walks back; the last symbol is
    predicted wrong on purpose.
    """
    symbols = parse_symbols(text)
    data = symbols[:-1]
    n = len(data)
    steps = [Step(i, i, 0, None) for i in range(n)]
    steps += [Step(n, n - 1 - j, j, data[n - 1 - j]) for j in range(n)]
    steps.append(Step(n, 0, n, 2))  # should be '$'
    return Trace(symbols, list(reversed(data)) + [1], steps, memory_cells=30)


def test_every_symbol_has_its_own_single_character() -> None:
    assert sorted(SYMBOL_CHARS) == list(range(NUM_SYMBOLS))
    assert [SYMBOL_CHARS[s] for s in (BLANK, EOS, PLUS, REPEAT_2, REPEAT_3)] == [".", "$", "+", "2", "3"]
    data = range(FIRST_DATA_SYMBOL, FIRST_DATA_SYMBOL + NUM_DATA_SYMBOLS)
    assert all(SYMBOL_CHARS[s].isalpha() for s in data)
    chars = list(SYMBOL_CHARS.values())
    assert all(len(char) == 1 and char.isascii() and char.isprintable() for char in chars)
    assert len(set(chars)) == len(chars)
    assert NO_PREDICTION_CHAR not in chars
    assert (symbol_char(0), symbol_char(1), symbol_char(32), symbol_char(33), symbol_char(34)) == (".", "$", "+", "2", "3")
    assert symbols_text(list(range(2, 32))) == "abcdefghijklmnopqrstuvwxyzABCD"


def test_parse_symbols_inverts_symbols_text() -> None:
    every = list(range(35))
    assert parse_symbols(symbols_text(every)) == every


@pytest.mark.parametrize("symbol", [-1, 35, 100])
def test_symbol_outside_the_vocabulary_is_refused(symbol: int) -> None:
    with pytest.raises(ValueError, match="not in the vocabulary"):
        symbol_char(symbol)


def test_parse_symbols_names_the_bad_character() -> None:
    with pytest.raises(ValueError, match=r"'#' at position 2"):
        parse_symbols("ab#")


def test_render_text_of_a_perfect_copy() -> None:
    text = render_text(perfect_copy("abc$"))
    lines = text.splitlines()
    assert lines[0] == "input:  abc$"
    assert lines[1] == "target: abc$"
    assert lines[2].split() == ["t", "input", "mem", "out", "written", "pred"]
    rows = lines[3:]
    assert len(rows) == 4
    for t, (row, char) in enumerate(zip(rows, "abc$", strict=True)):
        assert row.count("[") == 1 and f"[{char}]" in row  # the head is on cell t
        assert row.split()[0] == str(t)
        assert row.endswith(f"  {char}")  # predicted, and right: no "(want ...)"
        assert " - " in row  # no memory tape
    assert "abc" in rows[-1]  # the output written before the last step
    assert NO_PREDICTION_CHAR not in text and "want" not in text
    assert all(line == line.rstrip() for line in lines)


def test_render_text_columns_line_up() -> None:
    rows = render_text(perfect_copy("abcdefghij$")).splitlines()[3:]
    assert len({row.index("[") - 3 * t for t, row in enumerate(rows)}) == 1


def test_render_text_marks_steps_without_prediction_and_mistakes() -> None:
    text = render_text(forward_reverse("abc$"))
    rows = text.splitlines()[3:]
    assert [row.rstrip().endswith(NO_PREDICTION_CHAR) for row in rows] == [True] * 3 + [False] * 4
    assert rows[0].split()[1:3] == ["[a]", "b"] and rows[0].split()[-3:] == ["0", "0", "#"]
    assert rows[3].split()[4:7] == ["[$]", "2", "0"]  # head on the end marker, memory head 2, output position 0
    assert rows[3].endswith("  c")
    assert rows[5].split()[-2:] == ["cb", "a"]  # written so far, then the prediction
    assert rows[6].endswith("a  (want $)")
    assert text.count("want") == 1


def test_render_text_flags_a_prediction_past_the_target() -> None:
    trace = Trace(parse_symbols("a$"), parse_symbols("a$"), [Step(0, None, 0, 2), Step(1, None, 1, 1), Step(1, None, 2, 1)])
    assert render_text(trace).splitlines()[-1].endswith("$  (want nothing)")


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (Step(3, None, 0, None), "input head 3 is off the input tape"),
        (Step(-1, None, 0, None), "input head -1"),
        (Step(0, 30, 0, None), "memory head 30 is off the memory tape"),
        (Step(0, None, -1, None), "output position -1"),
        (Step(0, None, 0, 35), "prediction 35"),
    ],
)
def test_malformed_trace_is_refused(step: Step, message: str, tmp_path: Path) -> None:
    trace = Trace(parse_symbols("ab$"), parse_symbols("ab$"), [Step(0, 0, 0, None), step], memory_cells=30)
    with pytest.raises(ValueError, match=f"step 1: {message}"):
        render_text(trace)
    with pytest.raises(ValueError, match=f"step 1: {message}"):
        render_figure(trace, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_trace_helpers() -> None:
    trace = forward_reverse("ab$")
    assert trace.predictions() == [3, 2, 2]
    assert trace.output_text() == "baa"
    assert trace.has_memory()
    assert not perfect_copy("ab$").has_memory()


@pytest.mark.parametrize("trace", [perfect_copy("abcde$"), forward_reverse("abcdefg$")], ids=["copy", "forward-reverse"])
def test_render_figure_writes_a_png(trace: Trace, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = render_figure(trace, str(tmp_path / "trace.png"), title="trace")
    assert path == tmp_path / "trace.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000


def test_render_figure_of_a_long_episode_with_wrapping_memory(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    symbols = parse_symbols("abcdefghijklmno$")
    steps = [Step(min(t, 15), (29 - t) % 30, t // 2, symbols[t // 2] if t % 2 else None) for t in range(32)]
    trace = Trace(symbols, symbols, steps)  # memory_cells unknown: the panel stops at the highest cell visited
    assert render_figure(trace, tmp_path / "long.png").read_bytes().startswith(PNG_SIGNATURE)


def test_render_figure_leaves_pyplot_alone(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    backend = matplotlib.get_backend()
    render_figure(perfect_copy("ab$"), tmp_path / "copy.png")
    assert matplotlib.get_backend() == backend


@pytest.mark.parametrize("task_name", ["copy", "forward-reverse"])
def test_a_model_trace_renders(task_name: str, tmp_path: Path) -> None:
    """The model's own traces (untrained, so anything may happen) render as text and as a PNG."""
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    model_module = pytest.importorskip("rlntm_demo.model")
    from rlntm_demo.config import ModelConfig
    from rlntm_demo.tasks import make_task

    task = make_task(task_name, num_symbols=5)
    batch = task.sample(complexity=4, batch_size=1, generator=torch.Generator().manual_seed(0))
    config = ModelConfig(controller="direct", interfaces=task.interfaces)
    model = model_module.RLNTM(config, generator=torch.Generator().manual_seed(0))
    trace = model.trace(batch, greedy=False)
    assert len(trace.steps) >= len(trace.target_symbols)
    assert trace.has_memory() == task.interfaces.memory
    assert len(trace.predictions()) == len(trace.target_symbols)  # every target is emitted
    lines = render_text(trace).splitlines()
    assert len(lines) == 3 + len(trace.steps)
    assert render_figure(trace, tmp_path / "model.png").read_bytes().startswith(PNG_SIGNATURE)
