"""Replace one preset's rows of ``docs/results/table4.csv`` with the runs of a newer sweep.

Table 4's runs were trained into folders that are not kept; a preset redefined since (the
``authors`` preset took the authors' direct access at fd72332) is trained again into a root of its
own. This keeps every other row of the published table as it is, takes the preset's rows from the
runs under ``ROOT`` (finished or still going: :func:`rlntm_demo.results.collect`), and writes the
table, the summary and that preset's learning curves back into ``docs/results`` (``curves.rst``
shows every ``curves_*.png`` there, the summary's configurations first). The rows it replaces are
kept, once, in ``OLD_ROWS`` (a CSV of the same columns), unless that file exists.

Usage (from the repository root)::

    python docs/results/replace_preset_rows.py authors runs/issue19/authors-window \
        docs/results/table4-authors-paper-gates.csv
"""

import csv
import sys
from pathlib import Path

from rlntm_demo.results import (RUN_COLUMNS, SUMMARY_COLUMNS, collect, plot_curves, summarize, write_csv,
                                write_curves_rst, write_rst)

RESULTS = Path("docs/results")


def typed(row: dict[str, str]) -> dict[str, object]:
    """A row read back from the CSV, with the types :func:`rlntm_demo.results.collect` gives."""
    values: dict[str, object] = {}
    for key, text in row.items():
        if text == "":
            values[key] = None
        elif key == "solved":
            values[key] = text == "True"
        elif key in ("task", "controller", "preset", "status", "commits"):
            values[key] = text
        else:
            number = float(text)
            values[key] = int(number) if number.is_integer() and "." not in text else number
    return values


def main() -> None:
    preset, root, old_rows = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with open(RESULTS / "table4.csv", newline="") as handle:
        published = [typed(row) for row in csv.DictReader(handle)]
    replaced = [row for row in published if row["preset"] == preset]
    if not old_rows.exists():
        write_csv(replaced, old_rows)
    new = collect([root])
    if any(row["preset"] != preset for row in new):
        raise SystemExit(f"{root} holds runs of other presets than {preset!r}")
    rows = [row for row in published if row["preset"] != preset] + new
    summary = summarize(rows)
    # The summary's order of configurations (the paper's), then the seed.
    groups = [(row["task"], row["controller"], row["preset"]) for row in summary]
    rows.sort(key=lambda row: (groups.index((row["task"], row["controller"], row["preset"])), row["seed"]))
    write_csv(rows, RESULTS / "table4.csv")
    write_csv(summary, RESULTS / "summary.csv", SUMMARY_COLUMNS)
    write_rst(summary, RESULTS / "summary.rst")
    plot_curves(new, RESULTS)
    write_curves_rst(sorted(RESULTS.glob("curves_*.png"), key=lambda path: _curve_order(path, summary)),
                     RESULTS / "curves.rst")
    print(f"{len(new)} {preset} rows from {root} replace {len(replaced)}; kept in {old_rows}")


def _curve_order(path: Path, summary: list[dict[str, object]]) -> int:
    """A curve's place: the summary's order of (task, preset)."""
    task, _, preset = path.stem.removeprefix("curves_").rpartition("_")
    keys = [(row["task"], row["preset"]) for row in summary]
    return keys.index((task, preset)) if (task, preset) in keys else len(keys)


if __name__ == "__main__":
    main()
