"""Where a sequential check's time above its floor goes: its passes against plain forward passes.

Times, on the variable-length case of ``bench_check.py`` (255 sequences), with one thread:

* ``plain``: the 255 episodes run plainly, forward with gradient;
* ``intercepted``: the same runs with the samplers intercepted by a chooser that returns action 0
  at once, so what remains is the interception itself;
* ``passes``: the check's 255 enumeration passes (``SequentialRunner.passes``), forward with
  gradient, which run the same episodes with the check's chooser and bookkeeping.

Medians of alternated repeats, in CPU seconds of this process (``time.process_time``), which move
less than wall-clock times when other jobs share the machine.

Usage::

    python benchmarks/sequential_passes.py --repeats 9
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_check import LSTMPolicy, make_episode, median_times

from reinforce_check.enumeration import SequentialRunner
from reinforce_check.patching import intercept_samplers


class FirstAction:
    """A chooser that takes action 0 and records nothing."""

    def choose(self, weights: torch.Tensor, num_samples: int, replacement: bool, site: str) -> torch.Tensor:
        return torch.zeros(weights.shape[0], num_samples, dtype=torch.long)


def timings(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    episode = make_episode(LSTMPolicy().double(), stop_action=True)
    count = sum(1 for _ in SequentialRunner(episode, max_sequences=10**6).passes())

    def plain() -> None:
        for _ in range(count):
            episode()

    def intercepted() -> None:
        for _ in range(count):
            with intercept_samplers(FirstAction()):
                episode()

    def passes() -> None:
        for _ in SequentialRunner(episode, max_sequences=10**6).passes():
            pass

    functions: dict[str, Callable[[], None]] = {"plain": plain, "intercepted": intercepted, "passes": passes}
    return median_times(functions, repeats, clock=time.process_time)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="alternated repeats (medians are printed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    medians = timings(args.repeats)
    print(f"torch {torch.__version__}, 1 thread; CPU time, medians of {args.repeats} alternated repeats")
    print(f"command: python benchmarks/sequential_passes.py --repeats {args.repeats}")
    for name, seconds in medians.items():
        print(f"  {name:<12} {seconds * 1e3:8.1f} ms   {seconds / medians['plain']:5.2f}x plain")


if __name__ == "__main__":
    main()
