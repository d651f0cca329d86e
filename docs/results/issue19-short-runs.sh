#!/bin/bash
# Issue 19's short runs (docs/results/issue19-short-runs.csv), as they were made: one seed, the
# fast preset with the direct-access controller, one torch thread, training capped at 300 s of
# wall time (SIGINT: the trainer saves its checkpoint), then greedy evaluation on 1,000 fresh
# instances. Run from the repository root of a checkout of the commit in the CSV (607d580).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RUN='import sys, torch; torch.set_num_threads(1); from rlntm_demo.cli import main; sys.exit(main(sys.argv[1:]))'
run() {  # run DIR NAME TASK MULTIPLIERS SETTINGS...
  local dir=runs/issue19/$1 name=$2 task=$3 multipliers=$4
  shift 4
  mkdir -p "$dir"
  timeout -s INT 300 python -c "$RUN" train --task "$task" --controller direct --preset fast --seed 0 \
      --out "$dir/$name" --no-progress "$@"
  python -c "$RUN" eval "$dir/$name" --multipliers $multipliers --instances 1000 --json > "$dir/$name.eval.json"
}
all="1 2 5 10"
long="--max-updates 1500 --set stop_when_solved=false"
run final rc-scale5 repeat-copy "$all" --set model.shortcut_scale=5
run final rev-base reverse "$all" --set model.shortcut_scale=null
run final rev-scale5 reverse "$all" --set model.shortcut_scale=5
run final rev-marker reverse "$all" --set model.shortcut_scale=null --set model.input_start_marker=true
run final rev-scale5-marker reverse "$all" --set model.shortcut_scale=5 --set model.input_start_marker=true
run final rev-base-long reverse "$all" $long --set model.shortcut_scale=null
run final rev-scale5-long reverse "$all" $long --set model.shortcut_scale=5
run final rev-marker-long reverse "$all" $long --set model.shortcut_scale=null --set model.input_start_marker=true
run final rev-scale5-marker-long reverse "$all" $long --set model.shortcut_scale=5 --set model.input_start_marker=true
run final rc-scale5-perstep repeat-copy "$all" --set model.shortcut_scale=5 --set objective.entropy_mode=per-step
run final rc-base repeat-copy "$all" --set model.shortcut_scale=null
run final rc-perstep repeat-copy "$all" --set model.shortcut_scale=null --set objective.entropy_mode=per-step
run final-fr fr-scale5 forward-reverse "1 2 5" --set model.shortcut_scale=5
run final-fr fr-scale5-adjoff forward-reverse "1 2 5" --set model.shortcut_scale=5 --set model.adjacent_memory=off
