"""SQLAlchemy and Alembic integration: URLs and engines (:mod:`.urls`), templates from
metadata (:mod:`.metadata`), the fixtures (:mod:`.fixtures`, registered by the plugin
only when SQLAlchemy is importable)."""
