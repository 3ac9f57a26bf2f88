"""admission control: finished orders by time, refusals recorded

Admission control measures how many sagas finished lately: an index on
``order_orders.finished_at`` keeps that quick on a large table. Refusals write nothing to
the orders, so their count, for metrics, has a table of its own, ``order_admission``.
Data is untouched.

Revision ID: order_0003
Revises: order_0002
Create Date: 2026-12-02 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "order_0003"
down_revision: str | Sequence[str] | None = "order_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # if_not_exists: a database adopted from before migrations may have had these created
    # by this version already
    op.create_index("ix_order_orders_finished_at", "order_orders", ["finished_at"], unique=False, if_not_exists=True)
    op.create_table(
        "order_admission",
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("decision"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("order_admission", if_exists=True)
    op.drop_index("ix_order_orders_finished_at", table_name="order_orders", if_exists=True)
