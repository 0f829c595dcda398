import os

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def log_migrate(sender, using, **kwargs):
    """Append one line per ``migrate`` run to $SHOP_MIGRATE_LOG (the tests count them).

    ``flush`` (after each transactional test) sends post_migrate too, without a plan.
    """
    log = os.environ.get("SHOP_MIGRATE_LOG")
    if log and "plan" in kwargs:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{using} {os.getpid()}\n")


class CatalogConfig(AppConfig):
    name = "catalog"

    def ready(self):
        post_migrate.connect(log_migrate, sender=self)
