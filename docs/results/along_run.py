"""Greedy exact accuracy at longer inputs along a fast-preset run, every 100 updates past solving.

The run is trained as ``rlntm-demo train`` trains it (same config, same seed, same updates); after
solving, the parameters are evaluated greedily on 200 fixed instances at each multiple of the
training length given, and one line is printed per evaluation:
``update, updates past solving, then multiplier=exact/per-symbol``.

Usage (from the repository root)::

    python docs/results/along_run.py reverse 2 3,4,5,10 > docs/results/reverse-seed2-along-run.txt

The evaluations do not touch the run's random streams, so the run is the sweep's run; model
selection (``evaluation.select_on``) is switched off here, so the run ends on its last parameters.
"""

import sys

import torch

from rlntm_demo.presets import make_config
from rlntm_demo.training import Trainer


def main() -> None:
    task, seed, multipliers = sys.argv[1], int(sys.argv[2]), tuple(int(m) for m in sys.argv[3].split(","))
    torch.set_num_threads(1)
    trainer = Trainer(make_config(task, "direct", "fast", seed=seed, overrides=["evaluation.select_on=[]"]))
    while not trainer.finished:
        trainer.step()
        if trainer.solved_at is not None and (trainer.update - trainer.solved_at) % 100 == 0:
            results = trainer.evaluate(multipliers=multipliers, instances=200, seed=777)
            scores = " ".join(f"{m}x={r.exact:.3f}/{r.per_symbol:.4f}" for m, r in results.items())
            print(trainer.update, trainer.update - trainer.solved_at, scores, flush=True)


if __name__ == "__main__":
    main()
