"""Hooks users implement in ``conftest.py``."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_concurrent_db_populate_template(config: pytest.Config, connection: Any, backend: str) -> None:
    """Fill the template database, once per fingerprint.

    Called in the one process that builds the template, after the schema files
    (``concurrent_db_schema``) were applied.  ``connection`` is a DB-API connection
    to the template; it is committed afterwards.  ``backend`` is ``"sqlite"``,
    ``"postgresql"`` or ``"mysql"``.  The source code of every implementation is
    part of the template fingerprint: editing it builds a new template.  Implement
    only the arguments you need::

        def pytest_concurrent_db_populate_template(connection):
            connection.cursor().execute("INSERT INTO colour (name) VALUES ('red')")

    A long hook can say how far it is on the progress line with
    ``pytest_concurrent_db.report_progress("rows", done, total)``.
    """


@pytest.hookspec
def pytest_concurrent_db_template_key(config: pytest.Config) -> str | None:
    """Return a string to add to the template fingerprint.

    Use it when the template depends on something outside the schema files and
    the populate code (a data file, an environment variable): when the returned
    value changes, a new template is built.
    """
