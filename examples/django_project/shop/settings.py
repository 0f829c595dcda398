"""Settings of the example shop; the database comes from ``DJANGO_DB``.

``DJANGO_DB`` = ``sqlite`` (default) | ``postgresql`` | ``mysql``;
``DJANGO_DB_NAME`` names the databases (default ``shop``); ``DJANGO_DB_HOST``,
``DJANGO_DB_PORT``, ``DJANGO_DB_USER`` and ``DJANGO_DB_PASSWORD`` locate the server.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
ROOT_URLCONF = "shop.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "catalog",
    "orders",
    "reviews",
    "analytics",
]

KIND = os.environ.get("DJANGO_DB", "sqlite")
NAME = os.environ.get("DJANGO_DB_NAME", "shop")
SERVER = {
    "HOST": os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
    "PORT": os.environ.get("DJANGO_DB_PORT", ""),
    "USER": os.environ.get("DJANGO_DB_USER", "postgres" if KIND == "postgresql" else "root"),
    "PASSWORD": os.environ.get("DJANGO_DB_PASSWORD", ""),
}

if KIND == "sqlite":
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / f"{NAME}.sqlite3"},
        "analytics": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / f"{NAME}_analytics.sqlite3"},
    }
elif KIND in ("postgresql", "mysql"):
    if KIND == "mysql":
        import pymysql  # PyMySQL stands in for mysqlclient

        pymysql.install_as_MySQLdb()
    engine = f"django.db.backends.{KIND}"
    DATABASES = {
        "default": {"ENGINE": engine, "NAME": NAME, **SERVER},
        "analytics": {"ENGINE": engine, "NAME": f"{NAME}_analytics", **SERVER},
    }
else:
    raise RuntimeError(f"DJANGO_DB must be sqlite, postgresql or mysql, not {KIND!r}")

DATABASES["analytics"]["TEST"] = {"DEPENDENCIES": ["default"]}
# A read replica: in tests it is the same database as "default" (no clone of its own).
DATABASES["replica"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
DATABASE_ROUTERS = ["shop.routers.AnalyticsRouter"]
# serialized_rollback restores the catalog; content types and permissions are
# re-created by the flush after each transactional test (with new ids).
TEST_NON_SERIALIZED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
