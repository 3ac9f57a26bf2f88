"""an idempotency key remembers the order it was placed with

``order_orders.request_fingerprint`` keeps the digest of the order placed with an
idempotency key (``PlaceOrder.fingerprint()``), so that the key given again with a different
order is refused instead of answered with the earlier one. Nullable: orders placed without a
key, and every order from before, have none (one from before is taken to match). Data is
untouched.

Revision ID: order_0005
Revises: order_0004
Create Date: 2026-12-04 14:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.persistence.migrations.steps import add_column_if_missing

revision: str = "order_0005"
down_revision: str | Sequence[str] | None = "order_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "order_orders"


def upgrade() -> None:
    add_column_if_missing(TABLE, sa.Column("request_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("request_fingerprint")
