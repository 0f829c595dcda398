"""Code under test: it commits, as real service code does."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shop.db import SessionLocal
from shop.models import Customer, Plan, Purchase


def sign_up(session: Session, email: str, plan: str = "free") -> Customer:
    plan_id = session.scalar(select(Plan.id).where(Plan.name == plan))
    customer = Customer(email=email, plan_id=plan_id)
    session.add(customer)
    session.commit()
    return customer


def register(session: Session, email: str, plan_id: int = 1) -> None:
    """A sign-up that only writes (no lookup first): what SQLite lets threads do at once."""
    session.add(Customer(email=email, plan_id=plan_id))
    session.commit()


def buy(session: Session, customer: Customer, cents: int) -> int:
    session.add(Purchase(customer_id=customer.id, cents=cents))
    session.commit()
    return int(session.scalar(select(func.sum(Purchase.cents)).where(Purchase.customer_id == customer.id)) or 0)


def count_customers() -> int:
    """Uses the application's own session factory (rebound to the worker's clone in tests)."""
    with SessionLocal() as session:
        return int(session.scalar(select(func.count(Customer.id))) or 0)
