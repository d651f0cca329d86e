#!/bin/bash
# The runs of docs/results/table4.csv (issue 19's Table 4), as they were launched; run from the
# repository root. Each sweep skips finished runs and resumes interrupted ones, so running this
# again continues where it stopped. Then: rlntm-demo results runs/issue19/table4 --out docs/results
# The sweeps ran two at a time, one CPU each: the fast preset's two sweeps side by side, then the
# authors preset's seeds 0 and 1 beside the paper's failures and then the authors preset's seed 2.
# The fast preset's runs of the five tasks and of the LSTM were made again at fa36d80, with model
# selection (the first three commands, from a worktree of that commit); the authors preset's
# unfinished runs were resumed one task and seed at a time (--tasks T --seeds S), ForwardReverse
# first, which is the same run as the loop below makes.
set -euo pipefail
export OMP_NUM_THREADS=1
ROOT=runs/issue19/table4

# The fast preset, direct access, the five tasks of Table 4.
rlntm-demo sweep --tasks copy duplicated-input reverse repeat-copy --controllers direct \
  --presets fast --seeds 0 1 2 --max-updates 12000 --out $ROOT --num-cpus 1
rlntm-demo sweep --tasks forward-reverse --controllers direct \
  --presets fast --seeds 0 1 2 --max-updates 12000 --out $ROOT --num-cpus 1
# The LSTM on Reverse.
rlntm-demo sweep --tasks reverse --controllers lstm --presets fast --seeds 0 1 2 --max-updates 20000 --out $ROOT --num-cpus 1
# The authors preset, direct access, the paper's budget; all five tasks of a seed before the next seed.
for seed in 0 1 2; do
  rlntm-demo sweep --tasks copy duplicated-input reverse repeat-copy forward-reverse --controllers direct \
    --presets authors --seeds $seed --max-updates 20000 --out $ROOT --num-cpus 1
done
# The paper's failures, with the fast preset (none solved, so they never reach updates_after_solved).
for seed in 0 1 2; do
  rlntm-demo sweep --tasks sort addition repeat-copy-forward --controllers direct \
    --presets fast --seeds $seed --max-updates 12000 --out $ROOT --num-cpus 1
done
# The authors' own ForwardReverse seeds (their shipped runs used 3 and 10), after seeds 0 to 2 were
# not solved; run two at a time from a worktree of 08b395b, like the rest of the authors preset.
rlntm-demo sweep --tasks forward-reverse --controllers direct \
  --presets authors --seeds 3 10 --max-updates 20000 --out $ROOT --num-cpus 1
# The authors preset with the authors' direct access (model.direct_access=authors, the preset's
# definition from fd72332 on), the paper's budget: the column that replaces the one above, in
# runs/issue19/authors-window. Copy seed 0 was trained alone from a worktree of fd72332
# (rlntm-demo train --task copy --controller direct --preset authors --seed 0 --max-updates 20000
#  --out runs/issue19/authors-window/copy__direct__authors__seed0), then RepeatCopy seed 0 by the
# loop below, also at fd72332; the rest from a worktree of 7984e7c (the same model, a faster
# backward), one sweep per run in two lanes side by side, one CPU each:
#   lane A: reverse 0, forward-reverse 2, reverse 1, copy 1, reverse 2, copy 2
#   lane B: duplicated-input 0, repeat-copy 1, duplicated-input 1, repeat-copy 2, duplicated-input 2
# Its ForwardReverse seeds 0 and 1 are the reference-step runs of issue19-diagnostics.sh
# (runs/issue19/windowed, copied in once finished); the sweep skips them. Running the loop below
# makes the same runs and continues any that stopped.
for seed in 0 1 2; do
  rlntm-demo sweep --tasks copy repeat-copy reverse duplicated-input forward-reverse --controllers direct \
    --presets authors --seeds $seed --max-updates 20000 --out runs/issue19/authors-window --num-cpus 1
done
