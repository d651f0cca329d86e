#!/bin/bash
# Diagnostics of the authors preset on ForwardReverse (docs/results/targets.rst), as they were
# launched; run from the repository root. Not part of table4.csv: each changes one setting of the
# preset. Then: rlntm-demo results runs/issue19/<name> --out <folder>, whose table4.csv is
# docs/results/diagnostic-authors-<setting>.csv.
set -euo pipefail
export OMP_NUM_THREADS=1

# The authors' initial memory (zero but for the head's first cell, all ones), seeds 0 and 1. Launched
# from a worktree of 68810ae without the --set, since the authors preset set it there; from 7395df6
# on the preset leaves it off and this --set gives the same runs.
rlntm-demo sweep --tasks forward-reverse --controllers direct --presets authors --seeds 0 1 \
  --max-updates 20000 --out runs/issue19/marker --num-cpus 2 --threads-per-run 1 \
  --set model.memory_start_marker=true

# The direct-access shortcut scaled as in the fast preset, seeds 0 and 1, from a worktree of 7395df6.
rlntm-demo sweep --tasks forward-reverse --controllers direct --presets authors --seeds 0 1 \
  --max-updates 20000 --out runs/issue19/scale --num-cpus 2 --threads-per-run 1 \
  --set model.shortcut_scale=5

# The authors' direct access over the read window (every window cell written, 25 gated pairs, ten
# prediction gates), seeds 0 and 1, from a worktree of cda8d95. It runs on the reference step only,
# about 0.5 to 0.9 s an update on one core, so these runs go on across sessions with --resume
# (rlntm-demo sweep skips finished runs and resumes the others from their checkpoints).
rlntm-demo sweep --tasks forward-reverse --controllers direct --presets authors --seeds 0 1 \
  --max-updates 20000 --out runs/issue19/windowed --num-cpus 2 --threads-per-run 1 \
  --set model.step_impl=reference --set model.direct_access=authors
