"""Shapes the test databases from inside pytest, as real projects do.

A session fixture wires a ``pre_migrate`` handler that creates a PostgreSQL
extension: with ``--concurrent-db`` it runs once, while the template is built, and
every worker's clone has the extension.
"""

import pytest
from django.db.models.signals import pre_migrate


def create_extensions(sender, using, **kwargs):
    from django.db import connections

    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS citext")


@pytest.fixture(scope="session", autouse=True)
def _wire_extensions():
    pre_migrate.connect(create_extensions, dispatch_uid="shop-create-extensions")
    yield
    pre_migrate.disconnect(dispatch_uid="shop-create-extensions")
