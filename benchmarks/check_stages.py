"""Where a default sequential check spends its time above its floor, stage by stage.

Each stage of the check is timed against the plain runs it cannot avoid, alternated within every
repeat (medians), on one case of ``bench_check.py``:

* the enumeration with its exact sums (``exact_gradients`` over ``SequentialRunner.passes``)
  against a forward pass and two backward passes of every sequence;
* the enumeration alone (its passes, no backward) against a plain forward pass with gradient of
  every sequence;
* one evaluation of the exact J (``runner.objective()``, as central differences make two) against
  a plain forward pass without gradient of every sequence.

Usage::

    python benchmarks/check_stages.py                  # variable-length case (255 sequences)
    python benchmarks/check_stages.py --case fixed     # 3 actions x 7 steps (2,187 sequences)
"""

from __future__ import annotations

import argparse

import torch

from bench_check import CASES, LSTMPolicy, forward_and_two_backward, make_episode, median_times
from reinforce_check.enumeration import SequentialRunner, enumerate_with
from reinforce_check.exact import exact_gradients
from reinforce_check.patching import samplers_installed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="variable")
    parser.add_argument("--repeats", type=int, default=9, help="alternated repeats (medians are printed)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    policy = LSTMPolicy().double()
    tensors = list(policy.parameters())
    episode = make_episode(policy, stop_action=CASES[args.case])
    with samplers_installed():
        runner, _ = enumerate_with(SequentialRunner(episode, max_sequences=10**6), lambda passes: [None for _ in passes])
    count = len(runner.found)

    def enumeration(consume):
        def run() -> None:
            with samplers_installed():
                enumerate_with(SequentialRunner(episode, max_sequences=10**6), consume)

        return run

    def objective() -> None:
        with samplers_installed():
            runner.objective()

    def gradients() -> None:
        for _ in range(count):
            forward_and_two_backward(episode, tensors, None)

    def forward() -> None:
        for _ in range(count):
            episode()

    def forward_without_gradient() -> None:
        with torch.no_grad():
            forward()

    times = median_times(
        {
            "enumeration with exact sums": enumeration(lambda passes: exact_gradients(passes, tensors)),
            "forward + 2 backward": gradients,
            "enumeration alone": enumeration(lambda passes: [None for _ in passes]),
            "forward": forward,
            "one evaluation of J": objective,
            "forward without gradient": forward_without_gradient,
        },
        args.repeats,
    )
    print(f"command: python benchmarks/check_stages.py --case {args.case} --repeats {args.repeats}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {count:,} sequences; medians of "
          f"{args.repeats} alternated repeats")
    for stage, plain in (("enumeration with exact sums", "forward + 2 backward"), ("enumeration alone", "forward"),
                         ("one evaluation of J", "forward without gradient")):
        print(f"  {stage:<28} {times[stage] * 1e3:8.1f} ms   {plain:<25} {times[plain] * 1e3:8.1f} ms   "
              f"ratio {times[stage] / times[plain]:5.2f}x")


if __name__ == "__main__":
    main()
