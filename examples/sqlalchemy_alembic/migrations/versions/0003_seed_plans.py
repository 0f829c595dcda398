"""Data migration: the plans every installation has."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

plan = sa.table(
    "plan", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("monthly_cents", sa.Integer)
)


def upgrade():
    op.bulk_insert(
        plan, [{"id": 1, "name": "free", "monthly_cents": 0}, {"id": 2, "name": "pro", "monthly_cents": 900}]
    )


def downgrade():
    op.execute(plan.delete())
