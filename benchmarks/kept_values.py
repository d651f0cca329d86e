"""What keeping a few values per sequence costs the episode runs around them.

A sequential check completes one sequence per episode run and keeps what it learned of it (its
actions, their branching, its log-probability, objective and loss) until the enumeration ends.
This script runs the floor of a default sequential check (``bench_check.py``: per sequence, a
forward pass with gradient, two backward passes and two forward passes without gradient) four
ways, on both cases of ``bench_check.py``:

* ``floor``: keeping nothing;
* ``keeping tensors``: keeping, per sequence, five small tensors and a list of site names, as
  the check kept them before;
* ``making and dropping``: making the same tensors and dropping them at once;
* ``keeping numbers``: keeping the same values as Python numbers and lists, as the check keeps
  them now.

Each is printed as a ratio to ``floor``: medians of alternated repeats, in CPU seconds of this
process (``time.process_time``), with one thread.

Usage::

    python benchmarks/kept_values.py --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_check import LSTMPolicy, make_episode, median_times

SITES = ["Categorical.sample"] * 7


def kept_as_tensors(objective: torch.Tensor, loss: torch.Tensor) -> tuple[object, ...]:
    return (
        objective.detach().reshape(1).clone(),
        loss.detach().reshape(1).clone(),
        torch.tensor([[0, 1, 2, 0, 1, 2, 0]]),
        torch.tensor([[True] * 7]),
        torch.tensor([0.5], dtype=torch.float64),
        list(SITES),
    )


def kept_as_numbers(objective: torch.Tensor, loss: torch.Tensor) -> tuple[object, ...]:
    return (objective.item(), loss.item(), [0, 1, 2, 0, 1, 2, 0], [True] * 7, 0.5, list(SITES))


def timings(stop_action: bool, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    tensors = list(policy.parameters())
    episode = make_episode(policy, stop_action=stop_action)
    count = 255 if stop_action else 3**7

    def floor(keep: Callable[[torch.Tensor, torch.Tensor], tuple[object, ...]] | None, dropped: bool = False) -> None:
        kept = []
        for _ in range(count):
            objective, loss = episode()
            torch.autograd.grad(loss, tensors, retain_graph=True)
            torch.autograd.grad(loss, tensors)
            if keep is not None:
                values = keep(objective, loss)
                if not dropped:
                    kept.append(values)
            with torch.no_grad():
                episode()
                episode()

    return median_times(
        {
            "floor": lambda: floor(None),
            "keeping tensors": lambda: floor(kept_as_tensors),
            "making and dropping": lambda: floor(kept_as_tensors, dropped=True),
            "keeping numbers": lambda: floor(kept_as_numbers),
        },
        repeats,
        clock=time.process_time,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"command: python benchmarks/kept_values.py --repeats {args.repeats}")
    for name, stop_action in (("variable length (255 sequences)", True), ("3 actions x 7 steps (2,187 sequences)", False)):
        times = timings(stop_action, args.repeats)
        ratios = "   ".join(f"{label} {times[label] / times['floor']:.3f}x" for label in times if label != "floor")
        print(f"{name}: floor {times['floor']:.2f} s CPU   {ratios}", flush=True)


if __name__ == "__main__":
    main()
