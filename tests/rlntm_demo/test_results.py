"""Results: rows from synthetic run folders, the summary, the CSV and RST files, the curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlntm_demo.cli import EXIT_OK, EXIT_USAGE, main
from rlntm_demo.metrics import MetricsLog
from rlntm_demo.results import RUN_COLUMNS, SUMMARY_COLUMNS, collect, plot_curves, summarize, write_results


def make_run(root: Path, task: str, controller: str, preset: str, seed: int, *, status: str | None,
             updates: int, solved_at: int | None = None, exact: dict[str, float] | None = None) -> Path:
    """A run folder as training leaves it: metrics.csv, and summary.json unless ``status`` is None."""
    folder = root / f"{task}__{controller}__{preset}__seed{seed}"
    folder.mkdir(parents=True)
    with MetricsLog(folder / "metrics.csv") as log:
        for update in range(1, updates + 1):
            log.write({"update": update, "episodes": 16 * update, "level": min(update, 20), "error": 1.0 / update,
                       "seconds": 0.5, "greedy_exact": 1.0 if update == solved_at else None})
    if status is not None:
        (folder / "summary.json").write_text(json.dumps({
            "task": task, "controller": controller, "preset": preset, "seed": seed, "status": status,
            "message": None, "solved": status == "solved", "updates_to_solve": solved_at,
            "greedy_exact_accuracy": exact or {}, "training_complexity": 20, "level": min(updates, 20),
            "updates": updates, "episodes": 16 * updates, "seconds": 0.5 * updates, "seconds_per_update": 0.5,
        }))
    return folder


@pytest.fixture
def roots(tmp_path: Path) -> list[Path]:
    """Two roots: three copy/direct runs (2 solved, 1 not), one unfinished, a reverse/lstm run."""
    first, second = tmp_path / "a", tmp_path / "b"
    full = {"1": 1.0, "2": 1.0, "5": 0.9, "10": 0.5}
    make_run(first, "copy", "direct", "fast", 0, status="solved", updates=30, solved_at=30, exact=full)
    make_run(first, "copy", "direct", "fast", 1, status="max-updates", updates=50,
             exact={"1": 0.2, "2": 0.0, "5": 0.0, "10": 0.0})
    make_run(first, "copy", "direct", "fast", 2, status=None, updates=5)
    make_run(second, "copy", "direct", "fast", 3, status="solved", updates=10, solved_at=10, exact=full)
    make_run(second, "reverse", "lstm", "fast", 0, status="diverged", updates=4)
    (first / "notes").mkdir()  # not a run: ignored
    return [first, second]


def test_a_row_names_the_update_whose_parameters_were_evaluated(tmp_path: Path) -> None:
    """Under model selection the summary names the selected update; older summaries, which
    evaluated the last parameters, name none, and the row gives their last update."""
    selected = make_run(tmp_path, "reverse", "direct", "fast", 0, status="solved", updates=40, solved_at=10)
    summary = json.loads((selected / "summary.json").read_text())
    (selected / "summary.json").write_text(json.dumps({**summary, "evaluated_update": 25}))
    make_run(tmp_path, "reverse", "direct", "fast", 1, status="solved", updates=40, solved_at=10)
    make_run(tmp_path, "reverse", "direct", "fast", 2, status=None, updates=5)
    assert [row["evaluated_update"] for row in collect([tmp_path])] == [25, 40, None]


def test_rows_have_the_columns_and_the_paper_order(roots: list[Path]) -> None:
    rows = collect(roots)
    assert RUN_COLUMNS[:10] == ("task", "controller", "preset", "seed", "solved", "updates_to_solve",
                                "greedy_exact_1x", "greedy_exact_2x", "greedy_exact_5x", "seconds")
    assert all(set(RUN_COLUMNS) <= set(row) for row in rows)
    assert [(r["task"], r["seed"]) for r in rows] == [("copy", 0), ("copy", 1), ("copy", 2), ("copy", 3), ("reverse", 0)]
    solved, unsolved, unfinished, _, diverged = rows
    assert solved["solved"] is True and solved["updates_to_solve"] == 30 and solved["greedy_exact_10x"] == 0.5
    assert unsolved["solved"] is False and unsolved["updates_to_solve"] is None and unsolved["greedy_exact_1x"] == 0.2
    # No summary.json: read from the folder's name and metrics.csv.
    assert unfinished["status"] == "unfinished" and unfinished["updates"] == 5 and unfinished["level"] == 5
    assert unfinished["training_complexity"] == 20 and unfinished["seconds"] == 2.5 and unfinished["episodes"] == 80 and unfinished["greedy_exact_1x"] is None
    assert diverged["status"] == "diverged" and diverged["greedy_exact_1x"] is None


def test_summary_rate_and_medians(roots: list[Path]) -> None:
    copy, reverse = summarize(collect(roots))
    assert tuple(copy) == SUMMARY_COLUMNS
    assert (copy["runs"], copy["unfinished"], copy["solved"]) == (4, 1, 2)
    assert copy["success_rate"] == pytest.approx(2 / 3)  # the unfinished run does not count
    assert copy["median_updates_to_solve"] == 20.0  # over the solved runs (30 and 10) only
    assert copy["median_greedy_exact_1x"] == 1.0 and copy["median_greedy_exact_2x"] == 1.0
    assert copy["median_greedy_exact_10x"] == 0.5
    assert (reverse["runs"], reverse["solved"], reverse["success_rate"]) == (1, 0, 0.0)
    assert reverse["median_updates_to_solve"] is None and reverse["median_greedy_exact_1x"] is None


def test_write_results(roots: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "results"
    written = write_results(roots, out)
    assert [p.name for p in written["files"]] == ["table4.csv", "summary.csv", "summary.rst", "curves.rst",
                                                  "curves_copy_fast.png", "curves_reverse_fast.png"]
    with (out / "table4.csv").open(newline="") as file:
        table = list(csv.DictReader(file))
    assert tuple(table[0]) == RUN_COLUMNS and len(table) == 5
    assert table[0]["solved"] == "True" and table[1]["updates_to_solve"] == "" and table[0]["greedy_exact_5x"] == "0.9"
    with (out / "summary.csv").open(newline="") as file:
        summary = list(csv.DictReader(file))
    assert tuple(summary[0]) == SUMMARY_COLUMNS and summary[0]["median_updates_to_solve"] == "20.0"
    rst = (out / "summary.rst").read_text()
    assert rst.startswith(".. list-table::\n   :header-rows: 1\n\n   * - Task\n")
    assert "     - Median updates to solve (solved runs)\n" in rst
    assert "   * - copy\n     - direct\n     - fast\n     - 4\n     - 2/3 (+1 unfinished)\n     - 66.7%\n     - 20\n" in rst
    assert "   * - reverse\n     - lstm\n     - fast\n     - 1\n     - 0/1\n     - 0.0%\n     - \\-\n" in rst
    for name in ("curves_copy_fast.png", "curves_reverse_fast.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_a_row_names_the_commits_that_trained_the_run_by_their_short_hashes(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "copy", "direct", "fast", 0, status="solved", updates=3, solved_at=3)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "commits": ["a" * 40, "b" * 40 + "+dirty"]}))
    make_run(tmp_path, "copy", "direct", "fast", 1, status="solved", updates=3, solved_at=3)  # before commits
    assert [row["commits"] for row in collect([tmp_path])] == ["aaaaaaa bbbbbbb+dirty", None]


def test_a_root_without_runs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no runs in"):
        collect([tmp_path])
    with pytest.raises(ValueError, match="is not a folder"):
        collect([tmp_path / "missing"])


def test_a_run_folder_is_a_root_too(roots: list[Path]) -> None:
    rows = collect([roots[1] / "copy__direct__fast__seed3"])
    assert len(rows) == 1 and rows[0]["seed"] == 3


def test_the_same_run_in_two_roots_gets_two_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rlntm_demo.plots

    for root in ("first", "second"):
        make_run(tmp_path / root, "copy", "lstm", "paper", 0, status="max-updates", updates=3)
    drawn = {}
    monkeypatch.setattr(rlntm_demo.plots, "plot_learning_curves",
                        lambda runs, path, labels, title: drawn.setdefault(Path(path).name, labels))
    plot_curves(collect([tmp_path / "first", tmp_path / "second"]), tmp_path / "out")
    assert drawn == {"curves_copy_paper.png": ["lstm seed 0 (first)", "lstm seed 0 (second)"]}


def test_cli_results(roots: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs"
    assert main(["results", *map(str, roots), "--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:4] == ["task", "controller", "preset", "runs"]
    assert any(line.split() == ["copy", "direct", "fast", "4", "2/3", "(+1", "unfinished)", "66.7%", "20",
                                "100.0%", "100.0%", "90.0%", "50.0%"] for line in printed.splitlines()), printed
    assert "5 runs; median updates to solve is over the solved runs only" in printed
    assert {p.name for p in out.iterdir()} == {"table4.csv", "summary.csv", "summary.rst", "curves.rst",
                                               "curves_copy_fast.png", "curves_reverse_fast.png"}
    assert main(["results", str(tmp_path / "missing"), "--out", str(out)]) == EXIT_USAGE
    assert "is not a folder" in capsys.readouterr().err
