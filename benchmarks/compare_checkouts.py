"""The check's time with this checkout's reinforce_check against another checkout's, side by side.

Loads ``reinforce_check`` twice in one process, from this repository and from a baseline checkout
(for example an earlier commit, made with ``git worktree add /tmp/baseline <commit>``), and times a
default check with each, alternated within every repeat, on the cases of ``bench_check.py``. Each
time is printed as a ratio to the plain runs and to the floor of a default check measured in the same
repeats, so the two versions are compared under the same load.

Usage::

    git worktree add /tmp/baseline 9a49032
    python benchmarks/compare_checkouts.py --baseline /tmp/baseline
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from bench_check import LSTMPolicy, make_episode, median_times, run_floor

ROOT = Path(__file__).resolve().parent.parent


def _module_of(finder: object) -> str:
    return (finder if isinstance(finder, type) else type(finder)).__module__


def load_checker(root: Path) -> Callable[..., object]:
    """``check_reinforce`` from the package under ``root``, imported afresh."""
    # An editable install maps the package name to one folder; drop that mapping so that sys.path decides.
    sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in _module_of(finder).lower()]
    for name in [m for m in sys.modules if m == "reinforce_check" or m.startswith("reinforce_check.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        module: ModuleType = importlib.import_module("reinforce_check")
    finally:
        sys.path.remove(str(root))
    if not Path(module.__file__ or "").resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"reinforce_check came from {module.__file__}, not from {root}")
    return module.check_reinforce


def compare(name: str, *, stop_action: bool, batched: bool, repeats: int, checkers: dict[str, Callable[..., object]]) -> str:
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())
    tensors = list(params.values())
    episode = make_episode(policy, stop_action=stop_action)
    count = checkers["this checkout"](episode, params, batched=True).num_sequences  # type: ignore[attr-defined]

    def run(rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return episode(rows) if rows else episode()

    batches = [count] if batched else [None] * count

    def plain() -> None:
        for rows in batches:
            run(rows)[1].sum().backward()

    functions = {"plain": plain, "floor": lambda: run_floor(episode, tensors, batches)}
    for label, check in checkers.items():
        functions[label] = lambda check=check: check(episode, params, batched=batched)
    times = median_times(functions, repeats)
    mode = "batched" if batched else "sequential"
    lines = [f"{name}, {mode} ({count:,} sequences): floor {times['floor'] / times['plain']:.2f}x plain"]
    for label in checkers:
        lines.append(
            f"  {label:<14} {times[label] * 1e3:9.1f} ms   {times[label] / times['plain']:5.2f}x plain   "
            f"{times[label] / times['floor']:5.2f}x floor"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout holding the reinforce_check to compare with")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each measurement (medians are printed)")
    args = parser.parse_args(argv)
    checkers = {"baseline": load_checker(args.baseline), "this checkout": load_checker(ROOT)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} alternated repeats")
    print(f"command: python benchmarks/compare_checkouts.py --baseline {args.baseline} --repeats {args.repeats}")
    for batched in (True, False):
        print(compare("LSTM, 3 actions x 7 steps", stop_action=False, batched=batched, repeats=args.repeats, checkers=checkers))
        print(compare("LSTM, variable length", stop_action=True, batched=batched, repeats=args.repeats, checkers=checkers))


if __name__ == "__main__":
    main()
