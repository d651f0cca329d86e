"""Smoke tests for the scripts in examples/: each runs and prints the figures the docs quote.

Every example is imported from its file and its ``main()`` called; ``main()`` returns the figures
it printed, and the assertions pin the conclusions the documentation draws from them.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# The examples are thousands of tiny tensor operations: one intra-op thread each (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module, with examples/ on the path while it loads (as
    ``python examples/<name>.py`` has it, so an example can import the modules beside it)."""
    spec = importlib.util.spec_from_file_location(f"reinforce_check_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def test_tutorial_reinforce_standardized_returns_are_biased_and_the_fix_passes() -> None:
    results = load("tutorial_reinforce").main()
    assert results["tutorial"]["ok"] is False
    assert results["tutorial"]["relative_bias"] > 0.1
    # Reward-to-go without gamma**t is not the gradient of the discounted return either.
    assert results["reward-to-go"]["ok"] is False
    assert results["reward-to-go"]["relative_bias"] > 0.01
    assert results["corrected"]["ok"] is True
    assert results["corrected"]["relative_bias"] < 1e-10
    assert len({r["num_sequences"] for r in results.values()}) == 1


def test_group_baselines_rloo_is_unbiased_and_grpo_is_not() -> None:
    results = load("group_baselines").main()
    two = results[2]
    assert two["rloo"]["ok"] is True
    assert two["grpo"]["ok"] is False
    assert two["grpo"]["relative_bias"] > 0.1
    # GRPO's std normalization changes the direction, not only the length, of the expected gradient.
    assert two["grpo"]["off_direction"] > 0.05
    # Mean-centering that includes the answer's own reward scales the gradient by exactly (G-1)/G.
    assert two["grpo-mean"]["ok"] is False
    assert two["grpo-mean"]["scale"] == pytest.approx(1 / 2, abs=1e-12)
    assert two["grpo-mean"]["off_direction"] < 1e-10
    assert two["grpo-mean-rescaled"]["ok"] is True
    three = results[3]
    assert three["rloo"]["num_sequences"] == 2 * 27**3
    assert three["rloo"]["ok"] is True
    assert three["grpo-mean-rescaled"]["ok"] is True


def test_field_code_correct_estimators_pass_and_biased_ones_are_caught_unedited() -> None:
    results = load("field_code").main()
    decided = {name: (row["ok"], row["ground_truth"]) for name, row in results.items()}
    assert decided == {
        "ppo": (True, "finite differences"),
        "ppo marked": (True, "autograd"),
        "ppo norm_adv": (False, "autograd"),
        "generate": (True, "autograd"),
        "generate token mean": (False, "autograd"),
        "numpy": (True, "finite differences"),
    }
    assert results["ppo norm_adv"]["relative_bias"] > 0.1
    assert results["generate token mean"]["relative_bias"] > 0.1
    assert results["ppo marked"]["relative_bias"] < 1e-10


def test_kl_estimators_table() -> None:
    results = load("kl_estimators").main()
    values = results["values"]
    assert values["k1"] == pytest.approx(values["kl"], rel=1e-12)
    assert values["k3"] == pytest.approx(values["kl"], rel=1e-12)
    assert values["k2"] != pytest.approx(values["kl"], rel=1e-3)
    table = results["per_token"]
    passing = {key for key, row in table.items() if row["ok"]}
    assert passing == {("k1", "reward"), ("k1", "both"), ("k3", "both")}
    # k1 in the loss has zero expected gradient.
    assert table["k1", "loss"]["relative_size"] < 1e-12
    assert table["k1", "loss"]["relative_bias"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(table["k1", "loss"]["cosine"])
    # For an estimator whose value is unbiased, the score and pathwise parts add up to grad KL,
    # so each placement alone is off by exactly the other.
    assert table["k3", "reward"]["relative_bias"] == pytest.approx(table["k3", "loss"]["relative_size"], rel=1e-9)
    assert table["k3", "loss"]["relative_bias"] == pytest.approx(table["k3", "reward"]["relative_size"], rel=1e-9)
    sequence = results["sequence_level"]
    assert sequence["k2 loss vs KL(pi || pi_ref)"]["ok"] is True
    assert sequence["k3 loss vs KL(pi || pi_ref)"]["ok"] is False
    assert sequence["k3 loss vs KL(pi_ref || pi)"]["ok"] is True


def test_gymnasium_agent_passes_with_the_environment_randomness_replayed() -> None:
    results = load("gymnasium_agent").main()
    assert results["unmarked_error"] == "UninterceptedRandomnessError"
    assert results["ok"] is True
    assert any("enumerate_actions" in note for note in results["notes"])
    assert all(row["ok"] for row in results["by_seed"].values())
    assert len({row["J"] for row in results["by_seed"].values()}) == 3
    assert results["same_outside_check"] is True


def test_variance_table_baselines_reduce_variance() -> None:
    rows = load("variance_table").main()
    assert all(row["ok"] for row in rows.values())
    reference = rows["reward-to-go, no baseline"]["variance"]
    assert rows["total return, no baseline"]["variance"] > reference
    assert rows["constant baseline b_t = E[G_t]"]["variance"] < reference
    assert rows["state-value baseline V(s_t)"]["variance"] < rows["constant baseline b_t = E[G_t]"]["variance"]
    assert rows["mean of 2, no baseline"]["variance"] == pytest.approx(reference / 2, rel=1e-10)
    assert rows["RLOO, 2 episodes"]["variance"] < rows["mean of 2, no baseline"]["variance"]


def test_showcase(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    module = load("showcase")
    if not hasattr(module, "main"):
        pytest.fail("examples/showcase.py has no main()")
    module.main(tmp_path)  # exits with status 1 if the bias goes undetected or Copy is not solved
    out = capsys.readouterr().out
    assert "The check found the bias" in out
    assert out.count("PASSED over") == 2 and "solved: True" in out
    assert (tmp_path / "copy-direct-fast" / "trace.png").read_bytes()[:4] == b"\x89PNG"


def python_blocks(path: Path) -> list[str]:
    """The ``.. code-block:: python`` blocks of a reStructuredText page, dedented, in order."""
    blocks, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)))
    return blocks


def test_tutorial_page_code_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/tutorial.rst: its code blocks run in order as one script and print what the page says."""
    blocks = python_blocks(EXAMPLES.parent / "docs" / "tutorial.rst")
    assert len(blocks) >= 6
    namespace: dict[str, object] = {"__name__": "tutorial"}
    for block in blocks:
        exec(compile(block, "docs/tutorial.rst", "exec"), namespace)
    out = capsys.readouterr().out
    assert "REINFORCE gradient mismatch" in out
    assert "reinforce_check FAILED: 27 action sequences" in out
    assert "reinforce_check PASSED: 27 action sequences" in out
    assert "batched enumeration in 2 episode call(s) (28 rows)" in out
    assert "True 27\nthe episode uses @enumerate_actions" in out
