"""Building blocks the revisions share, so that each one stays a few lines of intent."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def add_column_if_missing(table: str, column: sa.Column[Any]) -> None:
    """Add a nullable (or defaulted) column, unless the table already has it: a database adopted from before
    migrations was completed in place (``add_missing_columns``) by this version of the code.
    Written as SQL (``db upgrade --sql``) there is no database to ask, and the SQL is for an
    empty one: the column is added."""
    if not op.get_context().as_sql:
        have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
        if column.name in have:
            return
    op.add_column(table, column)
