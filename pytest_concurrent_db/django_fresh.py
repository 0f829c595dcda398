"""pytest-django's transactional tests on fresh clones instead of a flush after each.

``@pytest.mark.concurrent_db(fresh=True)`` on a ``django_db(transaction=True)`` test (or
``--concurrent-db-fresh-transactional`` for all of them): when Django's
``TransactionTestCase`` sets the test up, each of its test databases set up by the plugin
is pointed at a fresh clone from the worker's warm pool (:class:`~.spares.FreshPool`);
``serialized_rollback`` has nothing to load (the clone holds the template's rows) and the
flush after the test is skipped (the clone is dropped in the background).  After the
test's teardown the aliases point at the worker's own clones again.

Django is patched only while such a test runs: ``TransactionTestCase._fixture_setup`` and
``_fixture_teardown`` are wrapped from the start of its setup until its function-scoped
fixtures are torn down (before the session's, which check the worker's own clones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .clones import ConcurrentDatabase, handle
from .errors import ConcurrentDBError
from .fixtures import FRESH_KEY, failed, give_back
from .spares import FreshPool

if TYPE_CHECKING:
    from .django import DjangoIntegration

__all__ = ["FreshDjango", "wants_fresh"]


def wants_fresh(item: pytest.Item, every_transactional: bool) -> bool:
    """Whether ``item`` is a pytest-django transactional test that asks for fresh clones
    (``@pytest.mark.concurrent_db(fresh=True)``, or ``every_transactional``).  A ``fresh``
    value other than True or False fails the test with one line."""
    __tracebackhide__ = True
    marker = item.get_closest_marker("django_db")
    if marker is None or not isinstance(item, pytest.Function):
        return False
    from pytest_django.django_compat import is_django_unittest
    from pytest_django.fixtures import validate_django_db

    if is_django_unittest(item):
        return False
    transactional, reset_sequences, *_ = validate_django_db(marker)
    fixtures = item.fixturenames
    if not (transactional or reset_sequences or "transactional_db" in fixtures or "live_server" in fixtures):
        return False
    ours = item.get_closest_marker("concurrent_db")
    fresh = ours.kwargs.get("fresh") if ours is not None else None
    if fresh is None:
        return every_transactional
    if not isinstance(fresh, bool):
        pytest.fail(
            f"concurrent-db: @pytest.mark.concurrent_db(fresh=...) must be True or False, not {fresh!r}", pytrace=False
        )
    return fresh


@dataclass
class _Taken:
    pool: FreshPool
    handle: ConcurrentDatabase
    aliases: list[str]


@dataclass
class FreshDjango:
    """The fresh clones of one transactional test and the patches that put them in place."""

    integration: DjangoIntegration
    item: pytest.Item
    taken: list[_Taken] = field(default_factory=list)
    _originals: dict[str, Any] = field(default_factory=dict)

    def install(self) -> None:
        """Wrap ``TransactionTestCase``'s fixture setup and teardown for this test."""
        from django.test import TransactionTestCase

        fresh = self
        setup = TransactionTestCase.__dict__["_fixture_setup"]
        teardown = TransactionTestCase.__dict__["_fixture_teardown"]
        self._originals = {"_fixture_setup": setup, "_fixture_teardown": teardown}

        def fixture_setup(cls: Any) -> None:
            # runs after the test's fixtures are torn down (Django's _post_teardown included:
            # its fixture's finalizer is registered after this one) and before the session's
            fresh.item.addfinalizer(fresh.finish)
            fresh.point(cls._databases_names(include_mirrors=False))
            with fresh.nothing_to_deserialize():
                setup.__func__(cls)

        def fixture_teardown(self: Any) -> None:
            pointed = {alias for taken in fresh.taken for alias in taken.aliases}
            rest = [a for a in self._databases_names(include_mirrors=False) if a not in pointed]
            if rest:  # a database the plugin did not set up is flushed as usual
                _with_databases(self, rest, lambda: teardown(self))

        TransactionTestCase._fixture_setup = classmethod(fixture_setup)
        TransactionTestCase._fixture_teardown = fixture_teardown

    def point(self, aliases: list[str]) -> None:
        """Point each test database among ``aliases`` (and its mirrors) at a fresh clone."""
        wanted = set(aliases)
        for database in self.integration.databases:
            if not wanted & set(database.aliases):
                continue
            databases = database.databases
            pool = databases.fresh_pool()
            try:
                name = pool.take()
            except ConcurrentDBError as exc:
                pytest.fail(f"concurrent-db: {exc}", pytrace=False)
            state = self.integration.state
            fresh = handle(databases.backend, pool.template, name, state.run_id, state.worker_id)
            self.taken.append(_Taken(pool, fresh, database.aliases + database.mirrors))
            self.item.stash.setdefault(FRESH_KEY, []).append(fresh)
            target = databases.backend.location(name)
            for alias in database.aliases:
                self.integration.pointer.point(alias, target, test_name=True)
            for alias in database.mirrors:
                self.integration.pointer.point(alias, target, test_name=False)

    def nothing_to_deserialize(self) -> Any:
        """A context in which the fresh aliases have no serialized contents (the clone holds them)."""
        from contextlib import contextmanager

        from django.db import connections

        @contextmanager
        def hidden() -> Any:
            saved = {}
            for taken in self.taken:
                for alias in taken.aliases:
                    connection = connections[alias]
                    if hasattr(connection, "_test_serialized_contents"):
                        saved[alias] = connection._test_serialized_contents
                        del connection._test_serialized_contents
            try:
                yield
            finally:
                for alias, contents in saved.items():
                    connections[alias]._test_serialized_contents = contents

        return hidden()

    def finish(self) -> None:
        """Undo the patches, point the aliases back at the worker's clones, and give the fresh
        clones back (kept if the test failed and ``--concurrent-db-keep-failed``).  Once per
        test: again, it does nothing."""
        from django.db import connections
        from django.test import TransactionTestCase

        for name, original in self._originals.items():
            setattr(TransactionTestCase, name, original)
        self._originals.clear()
        by_alias = {alias: db for db in self.integration.databases for alias in db.aliases}
        keep = self.integration.state.settings.keep_failed and failed(self.item)
        fresh = self.item.stash.get(FRESH_KEY, [])
        for taken in self.taken:
            for alias in taken.aliases:
                connections[alias].close()
                database = by_alias.get(alias)
                if database is not None:
                    self.integration.pointer.point(alias, database.target, test_name=True)
            primary = by_alias.get(taken.aliases[0])
            for mirror in primary.mirrors if primary is not None else []:
                self.integration.pointer.point(mirror, primary.target if primary else "", test_name=False)
            taken.handle.close_thread_connections()
            if taken.handle in fresh:
                fresh.remove(taken.handle)
            give_back(taken.pool, taken.handle.name, keep=keep)
        self.taken.clear()


def _with_databases(case: Any, aliases: list[str], run: Callable[[], None]) -> None:
    """Run ``run`` with ``case._databases_names`` limited to ``aliases``."""
    original = case._databases_names
    case._databases_names = lambda include_mirrors=True: [a for a in original(include_mirrors) if a in aliases]
    try:
        run()
    finally:
        del case._databases_names
