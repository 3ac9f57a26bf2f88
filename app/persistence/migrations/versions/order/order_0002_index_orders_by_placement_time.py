"""index orders by placement time

``python -m app orders list`` shows orders newest first, filtered by age: an index on
``order_orders.created_at`` keeps that quick on a large table. Data is untouched.

Revision ID: order_0002
Revises: order_0001
Create Date: 2026-11-26 12:18:08.944284
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "order_0002"
down_revision: str | Sequence[str] | None = "order_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # if_not_exists: a database adopted from before migrations may have had order_orders
    # created by this version already (with its index)
    op.create_index("ix_order_orders_created_at", "order_orders", ["created_at"], unique=False, if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_order_orders_created_at", table_name="order_orders", if_exists=True)
