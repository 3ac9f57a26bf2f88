"""Alembic's entry point for one service's migrations (see :mod:`app.persistence.migrations`).

The caller passes the service (``config.attributes["service"]``), the tables its code expects
(``config.attributes["metadata"]``: :func:`app.persistence.migrations.config`) and either an open
connection (online: ``db upgrade``, tests) or a URL (offline: ``db upgrade --sql``).
Only that service's tables are compared or changed: its database may hold the other
services' tables too.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from app.persistence.migrations import version_table

config = context.config
service: str = config.attributes["service"]
if "metadata" not in config.attributes:
    raise RuntimeError(f"running the {service} migrations needs its tables: pass metadata to migrations.config()")
target_metadata = config.attributes["metadata"]


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Only this service's tables (and their columns, indexes, constraints)."""
    if type_ == "table":
        return name in target_metadata.tables
    return True


options: dict[str, Any] = {
    "target_metadata": target_metadata,
    "version_table": version_table(service),
    "include_object": include_object,
    "compare_type": True,
    # SQLite alters tables by copying them; batch operations do it on SQLite and are plain
    # ALTERs elsewhere.
    "render_as_batch": True,
}

if context.is_offline_mode():
    context.configure(url=config.attributes["url"], literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes["connection"]
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()
