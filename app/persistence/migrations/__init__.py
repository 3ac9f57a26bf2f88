"""Schema migrations with Alembic: one history per service, each in its own version table.

Each service owns its tables (``<service>_*``) and may have a database of its own, or share
one with the others; so each service has its own line of revisions
(``app/persistence/migrations/versions/<service>/``, revision ids ``<service>_NNNN``) and records where
its tables stand in a table of its own, ``alembic_version_<service>``. ``python -m app db
upgrade`` brings every service's database to its head, whichever way they are laid out.

A service's database is in one of three states:

* **fresh** — none of the service's tables exist: ``db upgrade`` runs every migration;
  :meth:`app.persistence.db.Database.create_schema` (embedded mode, tests, a worker's start-up)
  creates the tables from the code's metadata instead and records the head, which is the
  same schema (a test compares them);
* **managed** — its version table exists: only migrations change it. ``create_schema``
  checks that it is at the head and refuses to go on otherwise, naming the command;
* **legacy** — its tables exist but no version table: made by a version from before
  migrations, whose schema is the first revision. ``db upgrade`` adopts it (records the
  first revision, then applies the rest); ``create_schema`` keeps the old behaviour
  (creates missing tables, adds missing nullable columns).

Every change runs under the same PostgreSQL advisory lock as ``create_schema``, so
processes starting together never race on DDL.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, text
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent

#: The PostgreSQL advisory lock every schema change takes (``Database.create_schema`` too).
SCHEMA_LOCK = 4242

FRESH, MANAGED, LEGACY = "fresh", "managed", "legacy"


class SchemaNotCurrent(RuntimeError):
    """A service's database is not at the revision this version of the code needs."""


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def baseline(service: str) -> str:
    """The first revision: the schema of the versions from before migrations."""
    return f"{service}_0001"


def config(
    service: str, metadata: MetaData | None = None, *, connection: Connection | None = None, url: str | None = None
) -> Config:
    """Alembic's configuration for one service's history (no alembic.ini: it is all here). Running
    migrations needs the tables the service's code expects (``metadata``: see
    :func:`app.bootstrap.service_metadata`); reading the history does not."""
    cfg = Config(output_buffer=io.StringIO())
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(HERE / "versions" / service))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["service"] = service
    if metadata is not None:
        cfg.attributes["metadata"] = metadata
    if connection is not None:
        cfg.attributes["connection"] = connection
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


@functools.cache
def scripts(service: str) -> ScriptDirectory:
    """The service's revisions (read once per process)."""
    return ScriptDirectory.from_config(config(service))


def head(service: str) -> str:
    heads = scripts(service).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the {service} service's migrations have {len(heads)} heads {heads}: merge them")
    return heads[0]


def lock(conn: Connection) -> None:
    """Serialize schema changes on PostgreSQL (until the transaction ends)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})


def state(conn: Connection, service: str, metadata: MetaData) -> str:
    """FRESH, MANAGED or LEGACY (see the module's docstring)."""
    inspector = inspect(conn)
    if inspector.has_table(version_table(service)):
        return MANAGED
    if any(inspector.has_table(name) for name in metadata.tables):
        return LEGACY
    return FRESH


def current(conn: Connection, service: str) -> str | None:
    """The revision the service's tables are at (None: not recorded)."""
    context = MigrationContext.configure(conn, opts={"version_table": version_table(service)})
    heads = context.get_current_heads()
    return heads[0] if heads else None


def stamp(conn: Connection, service: str, revision: str) -> None:
    """Record that the service's tables are at ``revision`` (no DDL but the version table)."""
    context = MigrationContext.configure(conn, opts={"version_table": version_table(service)})
    context.stamp(scripts(service), revision)


def check_current(conn: Connection, service: str, metadata: MetaData) -> None:
    """Raise :class:`SchemaNotCurrent` unless the managed tables are at the head and have
    every column the code expects."""
    at, needed = current(conn, service), head(service)
    if at != needed:
        known = at is None or scripts(service).get_revision(at) is not None
        why = "" if known else " (unknown here: a newer version migrated it)"
        raise SchemaNotCurrent(
            f"the {service} service's tables are at revision {at}{why}; this version needs {needed}: "
            "run `python -m app db upgrade`"
        )
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)} if inspector.has_table(table.name) else set()
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise SchemaNotCurrent(
                f"table {table.name} lacks {', '.join(missing)}, which the code expects but no migration of the "
                f"{service} service adds: write one (README: Schema migrations)"
            )


@dataclass(frozen=True)
class Upgraded:
    service: str
    before: str | None  # None: nothing recorded (fresh or legacy)
    after: str
    adopted: bool  # legacy tables, taken over at the first revision

    def summary(self) -> str:
        if self.adopted:
            return f"{self.service}: adopted existing tables at {baseline(self.service)}, upgraded to {self.after}"
        if self.before == self.after:
            return f"{self.service}: at {self.after}, nothing to do"
        return f"{self.service}: {self.before or 'empty'} -> {self.after}"


def upgrade(engine: Engine, service: str, metadata: MetaData) -> Upgraded:
    """Bring one service's tables to the head, in one transaction (PostgreSQL runs DDL
    transactionally: a failed migration leaves nothing half done)."""
    with engine.connect() as conn, conn.begin():
        lock(conn)
        found = state(conn, service, metadata)
        before = current(conn, service) if found == MANAGED else None
        adopted = found == LEGACY
        if adopted:
            _adopt(conn, service, metadata)
        command.upgrade(config(service, metadata, connection=conn), "head")
        after = current(conn, service)
    assert after is not None
    return Upgraded(service, before, after, adopted)


def _adopt(conn: Connection, service: str, metadata: MetaData) -> None:
    """Take over tables made by ``create_schema`` before migrations, at the first revision:
    first complete them as a worker of this version would have (create the first revision's
    tables that are missing, add missing nullable columns), then record the first revision;
    the later ones follow. (Each later migration tolerates what this completion did.)"""
    first = scripts(service).get_revision(baseline(service))
    assert first is not None and first.module is not None
    names: tuple[str, ...] = getattr(first.module, "TABLES", ())
    inspector = inspect(conn)
    missing = [metadata.tables[name] for name in names if not inspector.has_table(name)]
    metadata.create_all(conn, tables=missing)
    add_missing_columns(conn, metadata)
    stamp(conn, service, baseline(service))


def upgrade_sql(service: str, metadata: MetaData, dialect_url: str, out: TextIO) -> None:
    """Write the SQL that takes an empty database to the head (for a DBA to review or run)."""
    cfg = config(service, metadata, url=dialect_url)
    cfg.output_buffer = out
    command.upgrade(cfg, "head", sql=True)


def history(service: str) -> Iterator[Any]:
    """The service's revisions, newest first."""
    yield from scripts(service).walk_revisions()


def add_missing_columns(conn: Connection, metadata: MetaData) -> None:
    """Add the nullable or defaulted columns a newer version of the code added to existing tables
    (the schema of the versions from before migrations, completed in place)."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable and column.server_default is None:
                raise RuntimeError(
                    f"table {table.name} lacks column {column.name}, which cannot be added in place; "
                    "recreate the database (embedded: delete the SQLite file under CHECKOUT_DATA_DIR)"
                )
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            if column.server_default is not None:
                ddl += f" DEFAULT {column.server_default.arg}"  # type: ignore[attr-defined]
            if not column.nullable:
                ddl += " NOT NULL"
            conn.exec_driver_sql(ddl)
