"""Settings read from the environment at import time, as many services do."""

import os

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///shop.db")
