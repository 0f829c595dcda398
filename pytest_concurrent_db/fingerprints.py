"""``python -m pytest_concurrent_db fingerprint``: the template fingerprints of the project in
the current directory, before pytest runs (a CI cache step keys the snapshot directory on them).

The settings are resolved as a run resolves them: pytest's own configuration is loaded (ini
file, ``addopts``, environment, the initial ``conftest.py`` files, plugins, pytest-django's
settings) and our plugin configured, but no session starts: nothing is created, reaped or
locked.  The only server access is the question of its version (part of the fingerprint).
A ``concurrent_db_populate`` fixture cannot be known without a session: its source is left
out (use the ``pytest_concurrent_db_populate_template`` hook or schema files instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import Backend
from .errors import ConcurrentDBError
from .naming import template_name
from .paths import Directories
from .site import Site
from .template import Populator, fingerprint
from .url import DatabaseURL

__all__ = ["ProjectFingerprint", "project_fingerprints"]


@dataclass(frozen=True)
class ProjectFingerprint:
    """One template of the project: its fingerprint, backend, name and what it serves."""

    fingerprint: str
    backend: str
    template: str
    label: str

    def line(self) -> str:
        return f"{self.fingerprint}  {self.backend}  {self.template}  {self.label}"


def project_fingerprints(args: Sequence[str] = ()) -> list[ProjectFingerprint]:
    """The fingerprints a ``pytest --concurrent-db`` run with ``args`` would build templates for."""
    import pytest
    from _pytest.config import _prepareconfig  # the same loading of ini, conftests and plugins as a run

    from .state import get_state

    try:
        # --assert=plain: this package is imported already (no rewriting to warn about)
        config = _prepareconfig(["--concurrent-db", "--assert=plain", *args])
    except pytest.UsageError as exc:
        raise ConcurrentDBError(str(exc)) from None
    try:
        try:
            config._do_configure()
        except pytest.UsageError as exc:
            raise ConcurrentDBError(str(exc)) from None
        state = get_state(config)
        extra = [str(k) for k in config.hook.pytest_concurrent_db_template_key(config=config) if k]
        if state.settings.url is None and _django_settings(config):
            return _django(config, extra)
        url = state.settings.url or DatabaseURL(backend="sqlite", database="")
        label = "schema" if state.settings.schema else "template"
        return [_one(url, "", state.populators(None), extra, label)]
    finally:
        config._ensure_unconfigure()


def _one(
    url: DatabaseURL, base: str, populators: Sequence[Populator], extra: Sequence[str], label: str
) -> ProjectFingerprint:
    here = Path.cwd()
    site = Site(url, Directories(templates=here, clones=here, locks=here), base=base)
    backend: Backend = site.open_backend("fingerprint", "cli")
    try:
        print_ = fingerprint(backend, populators, extra)
    finally:
        backend.close()
    return ProjectFingerprint(print_, url.backend, template_name(site.base, print_), label)


def _django_settings(config: Any) -> bool:
    if not config.pluginmanager.hasplugin("concurrent_db_django"):
        return False
    from pytest_django.lazy_django import django_settings_is_configured

    return bool(django_settings_is_configured())


def _django(config: Any, extra: Sequence[str]) -> list[ProjectFingerprint]:
    """One fingerprint per distinct test database of Django's ``DATABASES`` (as the run's
    ``django_db_setup`` makes them)."""
    from django.db import connections
    from django.test.utils import get_unique_databases_and_mirrors

    from .django_common import CodeKeys, base_names, django_populator, url_and_base

    migrations = not config.getoption("nomigrations", False)
    test_databases, _ = get_unique_databases_and_mirrors(set(connections))
    keys = CodeKeys()
    bases = base_names()
    out = []
    for _, group in test_databases.values():
        first = group[0]
        try:
            url, _ = url_and_base(first)
        except ConcurrentDBError:
            continue  # not on a supported server: the run leaves it to pytest-django
        migrate = migrations and connections[first].settings_dict["TEST"].get("MIGRATE", True) is not False
        key, _ = keys.get(migrate)
        populator = django_populator(first, key, lambda alias, name: None, [])
        out.append(_one(url, bases[first], [populator], extra, f"Django database {first!r}"))
    return out
