"""One training update of the ``authors`` preset, with the authors' direct access, on each step.

The authors' direct access (``model.direct_access = "authors"``) writes every cell of the memory
window and gates 2 n^2 (memory offset, input offset) pairs; the fast step runs it in its Python
loop (the C++ loop has no window write). This times one update (the episode, the losses and the
backward pass) of ForwardReverse at its training length, batch 300, with:

* ``fast, authors' access``: the fast step, the window write (the preset as it is);
* ``reference, authors' access``: the reference step, the same model;
* ``fast, paper's gates``: the fast step with ``model.direct_access = "paper"`` (the C++ loop where
  it is built), the preset's model before fd72332;

alternated within every repeat, in one process and one torch thread, and prints each median as a
ratio to the first, so the three are compared under the same load.

Usage::

    python benchmarks/bench_window_write.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlntm_demo.model import RLNTM
from rlntm_demo.objective import episode_losses
from rlntm_demo.presets import make_config
from rlntm_demo.tasks import make_task

VARIANTS = {
    "fast, authors' access": [],
    "reference, authors' access": ["model.step_impl=reference"],
    "fast, paper's gates": ["model.direct_access=paper"],
}


def one_update(model: RLNTM, batch: object, config: object) -> float:
    """Seconds of one episode, its losses and the backward pass."""
    start = time.perf_counter()
    rollout = model.run_episode(batch)  # type: ignore[arg-type]
    episode_losses(rollout, config.objective).total.mean().backward()  # type: ignore[attr-defined]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed updates of each variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task("forward-reverse")
    batch = task.sample(task.training_complexity, 300, torch.Generator().manual_seed(0))
    runs = {}
    for name, overrides in VARIANTS.items():
        config = make_config("forward-reverse", "direct", "authors", seed=0, overrides=overrides)
        runs[name] = (RLNTM(config.model, generator=torch.Generator().manual_seed(0)), config)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, (model, config) in runs.items():
            torch.manual_seed(repeat)
            seconds = one_update(model, batch, config)
            if repeat:
                times[name].append(seconds)
    first = statistics.median(times[next(iter(VARIANTS))])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28s} {1000 * median:8.1f} ms an update   x{median / first:.2f}")


if __name__ == "__main__":
    main()
