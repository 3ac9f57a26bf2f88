"""events carry their trace context

Each event in ``analytics_events`` (the service's log and outbox) gets the W3C ``traceparent``
of the transaction that wrote it, so that its delivery, sent at once or swept late, joins
its cause's trace, and a replay links to it. Nullable: events written with tracing off, and
every event from before, carry none. Data is untouched.

Revision ID: analytics_0002
Revises: analytics_0001
Create Date: 2026-12-03 20:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.persistence.migrations.steps import add_column_if_missing

revision: str = "analytics_0002"
down_revision: str | Sequence[str] | None = "analytics_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "analytics_events"


def upgrade() -> None:
    add_column_if_missing(TABLE, sa.Column("traceparent", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("traceparent")
