"""Execution traces of the RL-NTM, as text and as Figure 7-style pictures.

A :class:`Trace` records one episode: the input and target sequences and, for each time step, a
:class:`Step` with the input head position, the memory head position, the output position and the
prediction made at that step (``None`` when the model made none). :func:`render_text` prints a
trace in a terminal, one line a step; :func:`render_figure` draws it the way Figure 7 of the
paper does and saves a PNG (matplotlib is imported only there).

Symbols are ints, those of :mod:`rlntm_demo.config`. Each renders as one plain ASCII character, in
text and in pictures:

=========  ===========  =========
symbol     meaning      character
=========  ===========  =========
0          blank        ``.``
1          end of data  ``$`` (the paper's ``∅``)
2 .. 27    data         ``a`` .. ``z``
28 .. 31   data         ``A`` .. ``D``
32         plus         ``+``
33         repeat 2     ``2``
34         repeat 3     ``3``
=========  ===========  =========

A step without a prediction shows ``#``, as in the paper. :func:`symbol_char` maps one symbol to
its character and :func:`parse_symbols` maps a string back, which is handy for writing traces by
hand:

>>> parse_symbols("abc$")
[2, 3, 4, 1]
>>> symbols_text([2, 3, 27, 28, 31, 32, 33, 34, 0, 1])
'abzAD+23.$'

Nothing runs at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import BLANK, EOS, FIRST_DATA_SYMBOL, PLUS, REPEAT_2, REPEAT_3

__all__ = [
    "BLANK_CHAR",
    "EOS_CHAR",
    "NO_PREDICTION_CHAR",
    "SYMBOL_CHARS",
    "Step",
    "Trace",
    "parse_symbols",
    "render_figure",
    "render_text",
    "symbol_char",
    "symbols_text",
]

BLANK_CHAR = "."
"""How the blank symbol (0) is shown."""
EOS_CHAR = "$"
"""How the end-of-data symbol (1) is shown; the paper prints it as ``∅``."""
NO_PREDICTION_CHAR = "#"
"""How a step without a prediction is shown, as in Figure 7 of the paper."""

_DATA_CHARS = "abcdefghijklmnopqrstuvwxyzABCD"  # the NUM_DATA_SYMBOLS data symbols, in order

SYMBOL_CHARS: dict[int, str] = {
    BLANK: BLANK_CHAR,
    EOS: EOS_CHAR,
    **{FIRST_DATA_SYMBOL + i: char for i, char in enumerate(_DATA_CHARS)},
    PLUS: "+",
    REPEAT_2: "2",
    REPEAT_3: "3",
}
"""The character of each symbol of the vocabulary (:data:`~rlntm_demo.config.NUM_SYMBOLS` = 35
symbols, 0..34, named in :mod:`rlntm_demo.config`)."""

_CHAR_SYMBOLS: dict[str, int] = {char: symbol for symbol, char in SYMBOL_CHARS.items()}


def symbol_char(symbol: int) -> str:
    """Return the one-character rendering of ``symbol``.

    Args:
        symbol: A symbol of the vocabulary, 0..34.

    Returns:
        Its character (see the table in the module docstring).

    Raises:
        ValueError: ``symbol`` is not in the vocabulary.

    >>> symbol_char(1), symbol_char(2), symbol_char(31), symbol_char(33)
    ('$', 'a', 'D', '2')
    """
    try:
        return SYMBOL_CHARS[symbol]
    except (KeyError, TypeError):
        raise ValueError(f"symbol {symbol!r} is not in the vocabulary 0..{len(SYMBOL_CHARS) - 1}") from None


def symbols_text(symbols: list[int]) -> str:
    """Return the characters of ``symbols`` joined into one string.

    >>> symbols_text([2, 3, 1])
    'ab$'
    """
    return "".join(symbol_char(symbol) for symbol in symbols)


def parse_symbols(text: str) -> list[int]:
    """Return the symbols written by ``text``, one character each; the inverse of :func:`symbols_text`.

    Raises:
        ValueError: A character of ``text`` is not the rendering of any symbol.

    >>> parse_symbols("a2+$")
    [2, 33, 32, 1]
    """
    symbols = []
    for position, char in enumerate(text):
        if char not in _CHAR_SYMBOLS:
            raise ValueError(f"character {char!r} at position {position} of {text!r} is not a symbol")
        symbols.append(_CHAR_SYMBOLS[char])
    return symbols


@dataclass
class Step:
    """Where the heads of the RL-NTM are at one time step, and what it predicts there.

    Attributes:
        input_head: Position of the input head on the input tape (0 = first symbol).
        memory_head: Position of the memory head, or ``None`` when the task has no memory tape.
        output_position: Position on the output tape, that is the index into the target of the
            symbol a prediction at this step is compared with.
        prediction: The symbol predicted at this step, or ``None`` for no prediction (``#``).
    """

    input_head: int
    memory_head: int | None  # None when the task has no memory tape
    output_position: int
    prediction: int | None  # None = no prediction at this step ('#')


@dataclass
class Trace:
    """One episode of the RL-NTM: its input, its target and the steps it took.

    Attributes:
        input_symbols: The symbols on the input tape, in order.
        target_symbols: The symbols the model should write, in order.
        steps: One :class:`Step` a time step.
        memory_cells: Number of cells of the memory tape, if known; the figure then shows them
            all. ``None`` shows the cells up to the highest one the memory head visits.

    >>> trace = Trace(parse_symbols("ab$"), parse_symbols("ab$"), [Step(0, 0, 0, 2), Step(1, 1, 1, None)])
    >>> trace.predictions()
    [2]
    >>> trace.output_text()
    'a'
    """

    input_symbols: list[int]
    target_symbols: list[int]
    steps: list[Step]
    memory_cells: int | None = field(default=None, kw_only=True)

    def predictions(self) -> list[int]:
        """Return the symbols predicted, in order, leaving out the steps without a prediction."""
        return [step.prediction for step in self.steps if step.prediction is not None]

    def output_text(self) -> str:
        """Return the predictions as one string (see :func:`symbols_text`)."""
        return symbols_text(self.predictions())

    def has_memory(self) -> bool:
        """Return whether any step has a memory head (``False`` for a task without a memory tape)."""
        return any(step.memory_head is not None for step in self.steps)

    def validate(self) -> None:
        """Check that every symbol is in the vocabulary and every head is on its tape.

        Input heads must lie in ``0 .. len(input_symbols) - 1`` (the input tape does not wrap),
        memory heads in ``0 .. memory_cells - 1`` (or be non-negative when ``memory_cells`` is
        ``None``), output positions be non-negative.

        Raises:
            ValueError: Naming the first step or symbol at fault.
        """
        for name, symbols in (("input", self.input_symbols), ("target", self.target_symbols)):
            for index, symbol in enumerate(symbols):
                if symbol not in SYMBOL_CHARS:
                    raise ValueError(f"{name} symbol {index} is {symbol!r}, not in the vocabulary")
        if not self.input_symbols:
            raise ValueError("the input tape is empty")
        for t, step in enumerate(self.steps):
            if not 0 <= step.input_head < len(self.input_symbols):
                raise ValueError(
                    f"step {t}: input head {step.input_head} is off the input tape "
                    f"(positions 0..{len(self.input_symbols) - 1})"
                )
            if step.memory_head is not None and (
                step.memory_head < 0 or (self.memory_cells is not None and step.memory_head >= self.memory_cells)
            ):
                raise ValueError(f"step {t}: memory head {step.memory_head} is off the memory tape")
            if step.output_position < 0:
                raise ValueError(f"step {t}: output position {step.output_position} is negative")
            if step.prediction is not None and step.prediction not in SYMBOL_CHARS:
                raise ValueError(f"step {t}: prediction {step.prediction!r} is not in the vocabulary")


def _target_at(trace: Trace, position: int) -> int | None:
    return trace.target_symbols[position] if position < len(trace.target_symbols) else None


def render_text(trace: Trace) -> str:
    """Return a plain-text picture of ``trace``, one line a time step.

    A header gives the input and the target. Then each line shows the time step ``t``, the input
    tape with the symbol under the input head in brackets, the memory head position (``-`` when
    there is no memory tape), the output position, the output written before this step and the
    prediction made at it (``#`` for none). A prediction that differs from the target symbol at the
    output position is followed by ``(want X)``; one past the end of the target by ``(want nothing)``.
    Lines carry no trailing spaces.

    Args:
        trace: The trace to show; it is checked with :meth:`Trace.validate` first.

    Returns:
        The text, lines separated by ``\\n``, with no final newline.

    Raises:
        ValueError: The trace is malformed (see :meth:`Trace.validate`).

    A Copy episode that waits one step, copies two symbols, then errs at the end:

    >>> steps = [Step(0, 0, 0, None), Step(0, 0, 0, 2), Step(1, 1, 1, 3), Step(2, 2, 2, 2)]
    >>> print(render_text(Trace(parse_symbols("ab$"), parse_symbols("ab$"), steps)))
    input:  ab$
    target: ab$
     t  input      mem  out  written  pred
     0  [a] b  $     0    0           #
     1  [a] b  $     0    0           a
     2   a [b] $     1    1  a        b
     3   a  b [$]    2    2  ab       a  (want $)
    """
    trace.validate()
    tape_width = 3 * len(trace.input_symbols)
    predictions = trace.predictions()
    written_width = max(len("written"), len(predictions))
    memory = trace.has_memory()
    lines = [f"input:  {symbols_text(trace.input_symbols)}", f"target: {symbols_text(trace.target_symbols)}"]
    t_width = max(2, len(str(len(trace.steps) - 1)))
    lines.append(f"{'t':>{t_width}}  {'input':<{tape_width}}  {'mem':>3}  {'out':>3}  {'written':<{written_width}}  pred")
    written: list[int] = []
    for t, step in enumerate(trace.steps):
        tape = "".join(
            f"[{symbol_char(symbol)}]" if position == step.input_head else f" {symbol_char(symbol)} "
            for position, symbol in enumerate(trace.input_symbols)
        )
        mem = "-" if step.memory_head is None else str(step.memory_head)
        if not memory:
            mem = "-"
        if step.prediction is None:
            pred = NO_PREDICTION_CHAR
        else:
            pred = symbol_char(step.prediction)
            want = _target_at(trace, step.output_position)
            if want is None:
                pred += "  (want nothing)"
            elif want != step.prediction:
                pred += f"  (want {symbol_char(want)})"
        line = (
            f"{t:>{t_width}}  {tape:<{tape_width}}  {mem:>3}  {step.output_position:>3}  "
            f"{symbols_text(written):<{written_width}}  {pred}"
        )
        lines.append(line.rstrip())
        if step.prediction is not None:
            written.append(step.prediction)
    return "\n".join(lines)


def render_figure(trace: Trace, path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``trace`` the way Figure 7 of the paper does and save it as a PNG.

    Time runs along the x axis, one column a step. The panels show, top to bottom:

    - the input tape: one row a position, labelled with its symbol; the cell under the input
      head is shaded and shows the symbol read;
    - the memory tape (left out when the task has none): a ``*`` in the row of the memory head;
    - the output tape: one row a position, labelled with the target symbol; the prediction made
      at each step is written in the row of the output position, green when it equals the target,
      red when it does not, and a grey ``#`` marks a step without a prediction.

    matplotlib is imported here, and only here; the picture is drawn with its Agg backend without
    touching pyplot's global state.

    Args:
        trace: The trace to draw; it is checked with :meth:`Trace.validate` first.
        path: Where to write the PNG; its parent directory must exist.
        title: Title over the figure; none by default.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: The trace is malformed (see :meth:`Trace.validate`).
        ImportError: matplotlib is not installed.

    >>> import tempfile
    >>> steps = [Step(0, 0, 0, 2), Step(1, 1, 1, 3), Step(2, 2, 2, 1)]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_figure(Trace(parse_symbols("ab$"), parse_symbols("ab$"), steps), Path(tmp) / "copy.png")
    ...     png.read_bytes()[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    trace.validate()
    path = Path(path)
    n_steps = max(1, len(trace.steps))
    n_input = len(trace.input_symbols)
    memory = trace.has_memory()
    if memory:
        highest = max(step.memory_head for step in trace.steps if step.memory_head is not None)
        n_memory = trace.memory_cells if trace.memory_cells is not None else highest + 1
    else:
        n_memory = 0
    n_output = max(
        [len(trace.target_symbols), 1] + [step.output_position + 1 for step in trace.steps if step.prediction is not None]
    )

    cell = 0.28  # inches a cell; the memory tape (30 cells in the paper) gets flatter rows
    panels: list[tuple[str, int, float]] = [("input", n_input, cell)]
    if memory:
        panels.append(("memory", n_memory, cell if n_memory <= 12 else 0.15))
    panels.append(("output", n_output, cell))

    width = max(5.0, cell * n_steps + 1.8)
    heights = [rows * row_height for _, rows, row_height in panels]
    height = sum(heights) + 0.45 * len(panels) + (0.5 if title else 0.2) + 0.35
    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    if len(panels) == 1:  # pragma: no cover - there are always at least two panels
        axes = [axes]
    text_size = 8.5

    for ax, (name, rows, _) in zip(axes, panels, strict=True):
        ax.set_xlim(-0.5, n_steps - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)  # position 0 at the top, as a tape read downwards
        ax.set_xticks(range(n_steps), minor=True)
        ax.set_yticks(range(rows), minor=True)
        ax.grid(which="minor", color="0.92", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(axis="y", labelsize=text_size)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=text_size + 1)

    input_ax = axes[0]
    input_ax.set_yticks(range(n_input), [symbol_char(symbol) for symbol in trace.input_symbols], family="monospace")
    for t, step in enumerate(trace.steps):
        input_ax.add_patch(Rectangle((t - 0.5, step.input_head - 0.5), 1, 1, color="#c6dbef", linewidth=0))
        input_ax.text(
            t, step.input_head, symbol_char(trace.input_symbols[step.input_head]),
            ha="center", va="center", fontsize=text_size, family="monospace",
        )

    if memory:
        memory_ax = axes[1]
        memory_ax.set_yticks(range(n_memory), [str(cell_index) for cell_index in range(n_memory)])
        if n_memory > 12:  # label every fifth cell only, to keep the labels apart
            memory_ax.set_yticks(
                range(0, n_memory, 5), [str(cell_index) for cell_index in range(0, n_memory, 5)]
            )
        visits = [(t, step.memory_head) for t, step in enumerate(trace.steps) if step.memory_head is not None]
        # the paper's ``*``, drawn as an asterisk marker so that it sits on the centre of its cell
        memory_ax.scatter(
            [t for t, _ in visits], [head for _, head in visits], marker=(6, 2, 0), s=40, color="black", linewidths=1
        )

    output_ax = axes[-1]
    output_labels = [symbol_char(symbol) for symbol in trace.target_symbols]
    output_labels += [""] * (n_output - len(output_labels))
    output_ax.set_yticks(range(n_output), output_labels, family="monospace")
    for t, step in enumerate(trace.steps):
        if step.prediction is None:
            char, colour = NO_PREDICTION_CHAR, "0.6"
        else:
            char = symbol_char(step.prediction)
            colour = "#1a7f37" if _target_at(trace, step.output_position) == step.prediction else "#cf222e"
        output_ax.text(
            t, step.output_position, char, ha="center", va="center", fontsize=text_size,
            family="monospace", color=colour, fontweight="bold" if step.prediction is not None else "normal",
        )

    if n_steps > 20:  # label every fifth step only
        output_ax.set_xticks(range(0, n_steps, 5))
    else:
        output_ax.set_xticks(range(n_steps))
    output_ax.tick_params(axis="x", labelsize=text_size)
    output_ax.set_xlabel("time step")
    output_ax.set_title("green: correct, red: wrong, #: no prediction", loc="right", fontsize=text_size - 1, color="0.4")
    if title:
        figure.suptitle(title)
    figure.align_ylabels(axes)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
