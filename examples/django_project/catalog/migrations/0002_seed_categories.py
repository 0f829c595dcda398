"""Data migration: the categories every environment starts with."""

from django.db import migrations

CATEGORIES = ["books", "games", "music"]


def seed(apps, schema_editor):
    Category = apps.get_model("catalog", "Category")
    db = schema_editor.connection.alias
    Category.objects.using(db).bulk_create([Category(name=name) for name in CATEGORIES])


def unseed(apps, schema_editor):
    Category = apps.get_model("catalog", "Category")
    Category.objects.using(schema_editor.connection.alias).filter(name__in=CATEGORIES).delete()


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
