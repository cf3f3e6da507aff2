"""Sphinx configuration of the nat4xr documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
Only Sphinx's own extensions are used, so the docs build offline with the
``docs`` extra.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Document the working tree even when nat4xr is not installed.
sys.path.insert(0, str(HERE.parent))
# Plots drawn while importing modules must not need a display.
os.environ.setdefault("MPLBACKEND", "Agg")

import nat4xr  # noqa: E402

project = "nat4xr"
author = "nat4xr developers"
copyright = "nat4xr developers"
release = nat4xr.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Sources are reStructuredText; the markdown notes and the notebook are
# shipped next to the pages as files (see html_extra_path) and linked from
# the index, so no markdown or notebook parser is needed.
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []
autosummary_generate = False

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = False

html_theme = "alabaster"
html_title = f"nat4xr {release}"
html_static_path: list[str] = []
# The notebook and the markdown notes are copied beside the HTML pages as they
# are; a note that is not written yet is simply not copied.
EXTRA_FILES = [
    "tutorial.ipynb",
    "models.ipynb",
    "design.md",
    "internals.md",
    "benchmarks.md",
    "reliability.md",
]
html_extra_path = [name for name in EXTRA_FILES if (HERE / name).is_file()]
