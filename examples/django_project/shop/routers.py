"""The ``analytics`` app lives in its own database; everything else in ``default``."""


class AnalyticsRouter:
    def _db(self, app_label):
        return "analytics" if app_label == "analytics" else None

    def db_for_read(self, model, **hints):
        return self._db(model._meta.app_label)

    def db_for_write(self, model, **hints):
        return self._db(model._meta.app_label)

    def allow_relation(self, obj1, obj2, **hints):
        return (obj1._meta.app_label == "analytics") == (obj2._meta.app_label == "analytics")

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if db == "replica":
            return False
        return (app_label == "analytics") == (db == "analytics")
