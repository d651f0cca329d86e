"""When a run first reached each curriculum level, or its greedy checks at the top level.

For runs still going on (partial results). Reads the ``metrics.csv`` of each run folder given and
prints CSV: by default one row ``run, level, first_update, updates_so_far`` per level reached;
with ``--greedy`` first, one row per run whose curriculum reached its top, summarising the greedy
exact accuracy at the training length that training measured there every ``evaluation.every``
updates: ``run, greedy_checks, min, median, max, last, last_update``.

Usage (from the repository root)::

    python docs/results/levels_reached.py runs/issue19/windowed/*/ > docs/results/diagnostic-authors-direct-access-levels.csv
    python docs/results/levels_reached.py --greedy runs/issue19/windowed/*/
"""

import csv
import statistics
import sys
from pathlib import Path


def main() -> None:
    greedy_only = sys.argv[1:2] == ["--greedy"]
    folders = [Path(name) for name in sys.argv[1 + greedy_only:]]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if greedy_only:
        writer.writerow(["run", "greedy_checks", "min", "median", "max", "last", "last_update"])
    else:
        writer.writerow(["run", "level", "first_update", "updates_so_far"])
    for folder in folders:
        with open(folder / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        if greedy_only:
            checks = [(int(row["update"]), float(row["greedy_exact"])) for row in rows if row["greedy_exact"].strip()]
            if checks:
                values = [value for _, value in checks]
                writer.writerow([folder.name, len(values), min(values), statistics.median(values), max(values),
                                 values[-1], checks[-1][0]])
            continue
        reached: dict[int, int] = {}
        for row in rows:
            reached.setdefault(int(row["level"]), int(row["update"]))
        for level, update in sorted(reached.items()):
            writer.writerow([folder.name, level, update, rows[-1]["update"]])


if __name__ == "__main__":
    main()
