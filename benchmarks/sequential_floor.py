"""A default sequential check against its floor, in several fresh processes.

``bench_check.py`` measures every ratio in one process. On the two-core development machine the
ratio of the same code moves by several per cent from one process to the next (the layout of
memory differs; the host's load too), more than between repeats within a process. This script
runs the default sequential check (``check_reinforce(episode, params)``) and its floor (the
passes it cannot avoid, run plainly, as ``bench_check.py`` defines it), alternated within each
repeat, in ``--processes`` fresh processes, and prints each process's ratio of medians and the
median over the processes.

Usage::

    python benchmarks/sequential_floor.py                         # variable-length case, 8 processes
    python benchmarks/sequential_floor.py --case fixed --processes 4 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench_check import CASES, LSTMPolicy, make_episode, median_times, run_floor
from reinforce_check import check_reinforce


def one_process(case: str, repeats: int) -> float:
    """The check's median time over its floor's, both measured in this process."""
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    params = dict(policy.named_parameters())
    tensors = list(params.values())
    episode = make_episode(policy, stop_action=CASES[case])
    count = check_reinforce(episode, params, batched=True).num_sequences

    calls: list[int | None] = [None] * count
    times = median_times(
        {"floor": lambda: run_floor(episode, tensors, calls), "check": lambda: check_reinforce(episode, params)}, repeats
    )
    return times["check"] / times["floor"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="variable")
    parser.add_argument("--processes", type=int, default=8, help="fresh processes to run (0: measure in this one)")
    parser.add_argument("--repeats", type=int, default=10, help="alternated repeats within each process")
    args = parser.parse_args(argv)
    if args.processes == 0:
        print(f"{one_process(args.case, args.repeats):.4f}")
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--case", args.case, "--processes", "0",
               "--repeats", str(args.repeats)]
    ratios = [float(subprocess.run(command, check=True, capture_output=True, text=True).stdout) for _ in range(args.processes)]
    print(f"command: python benchmarks/sequential_floor.py --case {args.case} --processes {args.processes} "
          f"--repeats {args.repeats}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default sequential check / its floor, "
          f"medians of {args.repeats} alternated repeats per process")
    print("per process: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(f"median over {len(ratios)} processes: {statistics.median(ratios):.3f}  (range {min(ratios):.3f} to {max(ratios):.3f})")


if __name__ == "__main__":
    main()
