"""The engine and session factory, built when the module is imported."""

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from shop import settings

engine = create_engine(settings.DATABASE_URL)
SessionLocal = sessionmaker(engine)
