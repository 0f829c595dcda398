import pytest


@pytest.fixture
def sql(concurrent_db):
    """Rewrite '?' placeholders for the backend's driver (sqlite3 uses ?, psycopg/PyMySQL use %s)."""
    return (lambda query: query) if concurrent_db.backend == "sqlite" else (lambda query: query.replace("?", "%s"))
