"""What the migration tests compare: a database's tables against the code's metadata, and
the revision each service's tables are at."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from app.bootstrap import service_metadata
from app.persistence import migrations
from config.settings import SERVICES


def diffs(engine: Engine, service: str) -> list[Any]:
    """Alembic's differences between the service's tables in the database and its metadata."""
    metadata = service_metadata(service)

    def mine(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": mine})
        return list(compare_metadata(context, metadata))


def revisions(engine: Engine) -> dict[str, str | None]:
    """Each service's recorded revision (None: none recorded)."""
    with engine.connect() as conn:
        return {service: migrations.current(conn, service) for service in SERVICES}
