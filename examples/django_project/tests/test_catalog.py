"""The ``db`` fixture: each test in a transaction that is rolled back."""

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import TestCase

from catalog.models import Category, Product


def test_seeded_by_data_migration(db):
    assert sorted(Category.objects.values_list("name", flat=True)) == ["books", "games", "music"]


def test_post_migrate_created_content_types_and_permissions(db):
    assert ContentType.objects.filter(app_label="catalog", model="product").exists()
    assert Permission.objects.filter(codename="add_product").exists()


@pytest.mark.parametrize("n", range(4))
def test_rolled_back(db, n):
    books, _ = Category.objects.get_or_create(name="books")  # also without migrations (no seed)
    Product.objects.create(category=books, name=f"p{n}", price_cents=100 * n)
    assert Product.objects.count() == 1


@pytest.mark.django_db
def test_marker(django_user_model):
    django_user_model.objects.create_user("ann")
    assert django_user_model.objects.count() == 1


def test_pre_migrate_extension(db):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT extname FROM pg_extension WHERE extname = 'citext'")
        assert cursor.fetchone() == ("citext",)


class TestDjangoTestCase(TestCase):
    """Django's own TestCase classes run under pytest-django too."""

    @classmethod
    def setUpTestData(cls):
        cls.games = Category.objects.get_or_create(name="games")[0]

    def test_set_up_test_data(self):
        Product.objects.create(category=self.games, name="chess", price_cents=1500)
        assert self.games.products.count() == 1
