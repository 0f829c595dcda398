"""A small shop service: SQLAlchemy models, Alembic migrations, an engine built at import time."""
