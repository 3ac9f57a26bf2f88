"""an order records the version of the saga definition it started under

``order_orders.saga_version`` is the version of the saga definition (``SAGA_VERSION`` in
``app/domain/saga.py``) an order started under; a resumed, re-driven or compensating saga
follows that definition. Expand only: the column defaults to 1, so every order from before
reads as started under version 1, which it was. Data is untouched.

Revision ID: order_0006
Revises: order_0005
Create Date: 2026-12-06 21:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.persistence.migrations.steps import add_column_if_missing

revision: str = "order_0006"
down_revision: str | Sequence[str] | None = "order_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "order_orders"


def upgrade() -> None:
    add_column_if_missing(TABLE, sa.Column("saga_version", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("saga_version")
