"""Instructions a default check executes, counted by valgrind, for this checkout and another.

Wall-clock times on a shared machine move with its load; the number of instructions a
computation executes does not. This script runs, under ``valgrind --tool=callgrind``, one default
batched check (``check_reinforce(episode, params, batched=True)``) of each case of
``bench_check.py``, and the floor of a default check (the passes it cannot avoid, run plainly, as
``compare_checkouts.py`` defines it), each after one warm-up run, with one thread. With
``--sequential`` it counts a default sequential check and its floor instead, on the variable-length
case only (the 2,187 episodes of the other case take half an hour under valgrind). Each checkout
runs in its own process, with ``PYTHONPATH`` pointing at it. Counts are exact for one process and
repeat from run to run to a fraction of a per cent. With ``--caches``, callgrind also simulates the
caches and the branch predictor (``--cache-sim=yes --branch-sim=yes``, several times slower) and
every event it counts is printed: cache misses and mispredicted branches besides instructions.

Usage::

    git worktree add /tmp/baseline 9a49032
    python benchmarks/count_instructions.py --baseline /tmp/baseline   # --baseline repeats
    python benchmarks/count_instructions.py --sequential --baseline /tmp/baseline
    python benchmarks/count_instructions.py --sequential --caches

valgrind must be installed; a check runs about 50 times slower under it (a minute or two per
checkout, most of it importing torch).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Callgrind zeroes its counters on entering the first of these C functions and writes them out on
# entering the second: os.getloadavg() and os.ctermid() call them, and nothing else in a check does.
_ZERO = "getloadavg"
_DUMP = "ctermid"


def _regions(stop_action: bool, batched: bool) -> dict[str, Callable[[], object]]:
    """A default check of one case of ``bench_check.py``, and its floor."""
    import torch
    from bench_check import LSTMPolicy, make_episode, run_floor

    from reinforce_check import check_reinforce

    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())
    tensors = list(params.values())
    episode = make_episode(policy, stop_action=stop_action)
    count = check_reinforce(episode, params, batched=True).num_sequences
    calls: list[int | None] = [count] if batched else [None] * count
    return {
        "check": lambda: check_reinforce(episode, params, batched=batched),
        "floor": lambda: run_floor(episode, tensors, calls),
    }


def _cases(sequential: bool) -> list[tuple[str, bool]]:
    """The measured cases: (name, stop_action)."""
    if sequential:
        return [("variable length", True)]
    return [("3 actions x 7 steps", False), ("variable length", True)]


def measure(sequential: bool) -> list[str]:
    """Run the measured regions (called under valgrind); returns their labels in order."""
    import torch

    import reinforce_check

    torch.set_num_threads(1)
    print(f"reinforce_check from {Path(reinforce_check.__file__).parent}", file=sys.stderr)
    labels = []
    for name, stop_action in _cases(sequential):
        for label, region in _regions(stop_action, batched=not sequential).items():
            region()  # warm up
            os.getloadavg()
            region()
            os.ctermid()
            labels.append(f"{name}: {label}")
    return labels


def count(checkout: Path, sequential: bool, caches: bool = False) -> dict[str, dict[str, int]]:
    """Callgrind's events (``Ir``, the instructions, and with ``caches`` the simulated cache misses
    and mispredicted branches) of each measured region, with ``reinforce_check`` imported from
    ``checkout``."""
    with tempfile.TemporaryDirectory() as folder:
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout), str(Path(__file__).parent)]))
        environment.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out", f"--log-file={folder}/log",
                f"--zero-before={_ZERO}", f"--dump-before={_DUMP}",
                *(["--cache-sim=yes", "--branch-sim=yes"] if caches else []),
                sys.executable, __file__, "--inside", f"{folder}/labels.json",
                *(["--sequential"] if sequential else []),
            ],
            check=True, env=environment,
        )  # fmt: skip
        labels = json.loads(Path(f"{folder}/labels.json").read_text())
        counts = {}
        for index, label in enumerate(labels, start=1):
            text = Path(f"{folder}/out.{index}").read_text()
            events = re.search(r"^events: (.+)$", text, re.MULTILINE)
            summary = re.search(r"^summary: (.+)$", text, re.MULTILINE)
            assert events is not None and summary is not None, f"no summary in callgrind's dump {index}"
            counts[label] = dict(zip(events.group(1).split(), (int(n) for n in summary.group(1).split())))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="a checkout holding a reinforce_check to compare with (repeat for several)",
    )
    parser.add_argument(
        "--sequential", action="store_true", help="count a sequential check (the variable-length case only)"
    )
    parser.add_argument(
        "--caches", action="store_true", help="also simulate the caches and branch predictor, and print every event"
    )
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        Path(args.inside).write_text(json.dumps(measure(args.sequential)))
        return
    checkouts = {**{str(path): path for path in args.baseline}, "this checkout": ROOT}
    results = {label: count(path, args.sequential, args.caches) for label, path in checkouts.items()}
    mode = "sequential" if args.sequential else "batched"
    width = max(len(label) for label in results)
    print("callgrind's counts (valgrind --tool=callgrind; Ir: instructions), one thread, one run after a warm-up")
    print(
        "command: python benchmarks/count_instructions.py"
        + (" --sequential" if args.sequential else "")
        + (" --caches" if args.caches else "")
        + "".join(f" --baseline {path}" for path in args.baseline)
    )
    for case, _ in _cases(args.sequential):
        print(f"{mode}, {case}:")
        for label, counts in results.items():
            check, floor = counts[f"{case}: check"], counts[f"{case}: floor"]
            for event in check:  # Ir (instructions) first, then the simulated misses, if any
                name = label if event == "Ir" else f"  {event}"
                print(
                    f"  {name:<{width}} check {check[event] / 1e6:8.1f} M   floor {floor[event] / 1e6:8.1f} M   "
                    f"{check[event] / max(floor[event], 1):5.3f}x floor"
                )


if __name__ == "__main__":
    main()
