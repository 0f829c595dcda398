"""Real transactions: ``transactional_db``, ``transaction=True``, ``reset_sequences``,
``serialized_rollback`` and ``live_server``."""

import json
import urllib.request

import pytest
from django.db import connection, transaction

from catalog.models import Category, Product
from orders.models import Order


def test_transactional_db(transactional_db, django_user_model):
    user = django_user_model.objects.create_user("bob")
    with transaction.atomic():
        Order.objects.create(customer=user)
    assert Order.objects.count() == 1


def add_then_fail(category):
    with transaction.atomic():
        Product.objects.create(category=category, name="yo-yo", price_cents=300)
        raise RuntimeError("roll back")


@pytest.mark.django_db(transaction=True)
def test_transaction_marker_rollback_inside():
    category = Category.objects.create(name="toys")
    with pytest.raises(RuntimeError):
        add_then_fail(category)
    assert not Product.objects.exists()


@pytest.mark.django_db(reset_sequences=True)
def test_reset_sequences(django_user_model):
    user = django_user_model.objects.create_user("carl")
    assert Order.objects.create(customer=user).pk == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_serialized_rollback_restores_seed():
    assert "catalog.category" in connection._test_serialized_contents
    assert Category.objects.count() == 3  # even after another transactional test flushed it
    Category.objects.all().delete()


def test_live_server(live_server):
    books = Category.objects.get_or_create(name="books")[0]
    Product.objects.create(category=books, name="atlas", price_cents=2500)
    with urllib.request.urlopen(f"{live_server.url}/products/count") as response:
        assert json.load(response) == {"products": 1}
