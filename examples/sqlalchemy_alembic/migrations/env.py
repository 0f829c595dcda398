"""Alembic's cookbook env.py: the connection (or, as pytest-alembic hands it, the engine) in
``config.attributes``, else the URL of the application's settings (DATABASE_URL), else
``sqlalchemy.url``."""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Engine, create_engine, pool

from shop.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def run(connection):
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if isinstance(connection, Engine):
    with connection.begin() as connection:
        run(connection)
elif connection is not None:
    run(connection)
else:
    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:
        run(connection)
