"""Sphinx configuration for the reinforce_check documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Document the working tree even where the package is not installed.
sys.path.insert(0, str(ROOT))

import reinforce_check  # noqa: E402

project = "reinforce_check"
author = "The reinforce_check developers"
copyright = "The reinforce_check developers"
version = release = reinforce_check.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

exclude_patterns = ["_build", "results/*.rst", "results-v1/*.rst"]  # fragments that the results pages include

# autodoc
autodoc_typehints = "description"
# Types go next to documented parameters only (no bare lists for dataclass constructors).
autodoc_typehints_description_target = "documented"
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
add_module_names = False
python_use_unqualified_type_names = True
autosummary_generate = False

# napoleon: Google style only
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# intersphinx: remote inventories only with REINFORCE_CHECK_DOCS_ONLINE=1, so offline builds fetch nothing and stay warning-free.
_INTERSPHINX_ONLINE = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
intersphinx_mapping = _INTERSPHINX_ONLINE if os.environ.get("REINFORCE_CHECK_DOCS_ONLINE") == "1" else {}

# HTML
html_theme = "furo"
html_title = f"reinforce_check {release}"
