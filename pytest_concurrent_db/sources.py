"""Template sources beyond SQL files and hooks, from the settings: Alembic's ``upgrade head``,
SQLAlchemy metadata's ``create_all`` and seed files, in that order (after the schema files,
before the populate hook and fixture)."""

from __future__ import annotations

from .settings import Settings
from .template import Populator

__all__ = ["populators_from"]


def populators_from(settings: Settings) -> list[Populator]:
    """The populators of ``concurrent_db_alembic_ini``, ``concurrent_db_metadata`` and
    ``concurrent_db_seed`` (SQLAlchemy is imported only for the first two)."""
    out: list[Populator] = []
    if settings.alembic_ini is not None:
        from .alembic_template import alembic_populator

        out.append(alembic_populator(settings.alembic_ini, settings.alembic_env, settings.url))
    if settings.metadata:
        from .sqla.metadata import metadata_populator

        out.append(metadata_populator(settings.metadata, settings.backend))
    if settings.seed:
        from .seed import seed_populator

        out.append(seed_populator(settings.seed))
    return out
