"""Tests on the session fixture: the service commits, every test still starts clean."""

import pytest
from sqlalchemy import func, select

from shop.models import Customer, Plan
from shop.services import buy, count_customers, sign_up


def test_plans_come_from_the_data_migration(concurrent_db_session):
    names = concurrent_db_session.scalars(select(Plan.name).order_by(Plan.id)).all()
    assert names == ["free", "pro"]


@pytest.mark.parametrize("n", range(8))
def test_sign_up_and_buy(concurrent_db_session, n):
    assert concurrent_db_session.scalar(select(func.count(Customer.id))) == 0  # the last test's commit is gone
    customer = sign_up(concurrent_db_session, f"user{n}@example.com", plan="pro")
    assert buy(concurrent_db_session, customer, 500) == 500
    assert buy(concurrent_db_session, customer, 250) == 750


def test_the_apps_own_session_factory_is_on_the_clone(concurrent_db):
    from shop.db import engine

    assert concurrent_db.name in str(engine.url.database)
    assert count_customers() == 0


@pytest.mark.concurrent_db(isolation_level="SERIALIZABLE")
def test_serializable(concurrent_db_session):
    sign_up(concurrent_db_session, "serial@example.com")
