"""Packaging: the checker installs alone, the RL-NTM's needs are extras, and the README says so.

The imports are read from the source with :mod:`ast`, so these tests see every file, including the
ones no other test imports. An import counts as *eager* when it runs as its module is imported (at
module level, in a class body, under a plain ``if``) and fails that import when the package is
missing; one inside a function, or in a ``try`` that catches ``ImportError``, is *lazy*. Imports
under ``if TYPE_CHECKING:`` never run and are not counted.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement  # a dependency of pytest itself
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra brings tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OWN_PACKAGES = {"reinforce_check", "rlntm_demo"}
PROJECT = "reinforce-check"


@dataclass(frozen=True)
class Import:
    """One import of a third-party module: its top-level name and where it is."""

    name: str
    where: str
    eager: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for handler in node.handlers:
        if handler.type is None:
            return True
        caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(c, ast.Name) and c.id in names for c in caught):
            return True
    return False


def third_party_imports(path: Path) -> list[Import]:
    """The imports of ``path`` outside the standard library, the project's own packages and the
    scripts beside it (a script run as ``python benchmarks/x.py`` imports its neighbours)."""
    found: list[Import] = []
    neighbours = {sibling.stem for sibling in path.parent.glob("*.py")}

    def visit(node: ast.AST, eager: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] if node.level == 0 else []
            else:
                modules = [alias.name for alias in node.names]
            for module in modules:
                name = module.split(".")[0]
                if name not in sys.stdlib_module_names and name not in OWN_PACKAGES and name not in neighbours:
                    found.append(Import(name, f"{path.relative_to(ROOT)}:{node.lineno}", eager))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            eager = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children: list[ast.AST] = list(node.orelse)
        elif isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                visit(child, False)
            children = [*node.handlers, *node.orelse, *node.finalbody]
        else:
            children = list(ast.iter_child_nodes(node))
        for child in children:
            visit(child, eager)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), True)
    return found


@cache
def pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def core() -> set[str]:
    return names(pyproject()["project"]["dependencies"])


def extra(name: str) -> set[str]:
    """The distributions an extra installs, beyond the core ones, with its own extras expanded."""
    extras = pyproject()["project"]["optional-dependencies"]
    found: set[str] = set()
    for text in extras[name]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == PROJECT:
            for inner in requirement.extras:
                found |= extra(inner)
        else:
            found.add(canonicalize_name(requirement.name))
    return found


def sources(*patterns: str) -> list[Path]:
    return sorted(path for pattern in patterns for path in ROOT.glob(pattern))


def test_core_dependencies_are_torch_and_numpy_only() -> None:
    assert core() == {"torch", "numpy"}


def test_library_imports_only_its_core_dependencies_when_imported() -> None:
    eager: dict[str, set[str]] = {}
    lazy: list[Import] = []
    for path in sources("reinforce_check/**/*.py"):
        for found in third_party_imports(path):
            if found.eager:
                eager.setdefault(found.name, set()).add(found.where)
            else:
                lazy.append(found)
    # pytest only in the plugin, which pytest itself loads.
    assert {where.split(":")[0] for where in eager.pop("pytest", set())} == {"reinforce_check/pytest_plugin.py"}
    assert set(eager) == core(), eager  # torch and numpy, both really imported
    declared = core() | {n for e in pyproject()["project"]["optional-dependencies"] for n in extra(e)}
    assert [i for i in lazy if canonicalize_name(i.name) not in declared] == []


def test_demo_and_showcase_imports_are_in_the_demo_and_sweep_extras() -> None:
    wanted = {
        canonicalize_name(i.name): i.where
        for path in sources("rlntm_demo/**/*.py", "examples/showcase.py")
        for i in third_party_imports(path)
    }
    assert wanted.keys() >= {"tqdm", "matplotlib", "ninja", "ray"}, wanted  # the scan finds them
    # Ray runs sweeps only; everything else the RL-NTM and the showcase import comes with the demo extra.
    assert "ray" in extra("sweep")
    assert {n: w for n, w in wanted.items() if n not in core() | extra("demo") | {"ray"}} == {}


def test_test_extra_brings_everything_the_suite_needs() -> None:
    test = core() | extra("test")
    # The tests run the RL-NTM, its sweeps and the examples.
    assert test >= extra("demo") | extra("sweep") | extra("examples")
    imported = {
        canonicalize_name(i.name): i.where
        for path in sources("tests/**/*.py", "examples/*.py", "benchmarks/*.py")
        for i in third_party_imports(path)
        if i.eager
    }
    assert {n: w for n, w in imported.items() if n not in test} == {}


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README's Quick start has no code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_first_command_installs_what_the_showcase_needs_and_runs_it() -> None:
    steps = [step.strip() for step in quick_start_commands()[0].split("&&")]
    assert steps[0] == 'pip install "torch==2.13.0"'
    assert steps[-1] == "python examples/showcase.py"
    installed = re.fullmatch(r'pip install -e "\.\[([a-z,]+)\]"', steps[1])
    assert installed is not None, steps
    brought = core() | {n for e in installed.group(1).split(",") for n in extra(e)}
    assert brought >= extra("demo")


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in ci.splitlines()]
    for command in quick_start_commands():
        for step in command.split("&&"):
            assert step.strip() in ci_lines, f"{step.strip()!r} of the README's Quick start is not run by .ci/run"


def test_checker_runs_with_only_torch_numpy_and_their_requirements_installed() -> None:
    """A fresh interpreter that cannot import any other installed distribution runs a check."""
    from importlib.metadata import distribution, packages_distributions

    allowed: set[str] = set()
    pending = ["torch", "numpy"]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in allowed:
            continue
        allowed.add(name)
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    blocked = sorted(
        module
        for module, dists in packages_distributions().items()
        if module.isidentifier() and module not in OWN_PACKAGES and not {canonicalize_name(d) for d in dists} & allowed
    )
    assert {"tqdm", "matplotlib", "ninja", "pytest"} <= set(blocked)  # installed here, hidden there
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        BLOCKED = set({json.dumps(blocked)})

        class Uninstalled:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Uninstalled())
        try:
            import tqdm
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("the blocker does not work")

        import torch
        import reinforce_check
        from reinforce_check import check_reinforce

        for module in pkgutil.iter_modules(reinforce_check.__path__):
            if module.name not in ("pytest_plugin", "__main__"):
                importlib.import_module(f"reinforce_check.{{module.name}}")

        logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        payoff = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)

        def episode():
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            return payoff[action], -dist.log_prob(action) * payoff[action]

        report = check_reinforce(episode, {{"logits": logits}})
        print(report.ok, report.num_sequences)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "3"]
