"""Sphinx configuration of the pytest-concurrent-db documentation (`nox -s docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

import pytest_concurrent_db  # noqa: E402  (after the path is set)

project = "pytest-concurrent-db"
author = "pytest-concurrent-db developers"
copyright = "pytest-concurrent-db developers"
release = version = pytest_concurrent_db.__version__

extensions = ["sphinx.ext.autodoc", "cdb_reference"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
default_role = "literal"
pygments_style = "sphinx"
add_module_names = False
