"""``python -m app db ...``: database chores — create tables, migrate schemas, say where each
service's schema stands."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import SERVICE_NAMES, choices_metavar, one_of
from app.cli.output import print_table
from config.names import BUILTIN_EXTENSIONS, SERVICES

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

cli = typer.Typer(
    name="db",
    help="Database chores: each service's tables (and those of the extensions CHECKOUT_EXTENSIONS "
    "names) in its own database or one shared by all, migrated by a line of revisions per service.",
    short_help="database chores",
)

Services = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        parser=one_of(SERVICE_NAMES),
        metavar=choices_metavar(SERVICE_NAMES),
        help="only this service (repeatable)",
    ),
]


def _service_databases(only: Sequence[str] | None) -> list[tuple[str, str]]:
    """(service, database URL) of each service asked for (all by default), and of each
    built-in extension that CHECKOUT_EXTENSIONS adds."""
    from config.settings import Settings

    settings = Settings()
    owners = SERVICES + tuple(name for name in settings.extension_targets if name in BUILTIN_EXTENSIONS)
    off = [name for name in only or () if name not in owners]
    if off:
        raise SystemExit(
            f"error: {', '.join(off)} is not in CHECKOUT_EXTENSIONS; name it there (CHECKOUT_EXTENSIONS={off[0]}) "
            "in every process's environment to add it"
        )
    return [(service, settings.database_url_for(service)) for service in owners if not only or service in only]


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@cli.command(
    "init", short_help="create missing tables (or check a migrated database is current) and seed catalog and stock"
)
def init() -> int:
    """Create each service's missing tables — or, in a database that migrations manage,
    check its schema is at the head — and seed the catalog and stock."""
    from app.bootstrap import Runtime

    rt = Runtime()
    try:
        rt.prepare()
    finally:
        rt.close()
    print("tables created (where missing); catalog and stock seeded")
    return 0


@cli.command("upgrade", short_help="migrate every service's database to this version's schema (adopts one from before)")
def upgrade(
    sql: Annotated[bool, typer.Option("--sql", help="print the SQL from an empty database instead")] = False,
    services: Services = None,
) -> int:
    """Migrate each service's database to this version's schema: an empty one gets every
    table, tables from before migrations are adopted, others are upgraded revision by
    revision. With --sql, print the SQL from an empty database instead (nothing is touched).
    Exit 1 if a schema cannot be brought to the head."""
    from app.bootstrap import service_metadata
    from app.persistence import migrations
    from app.persistence.db import make_engine

    targets = _service_databases(services)
    if sql:
        for service, url in targets:
            print(f"-- {service} service ({_shown(url)}), version table {migrations.version_table(service)}")
            migrations.upgrade_sql(service, service_metadata(service), url, sys.stdout)
        return 0
    engines: dict[str, Engine] = {}
    try:
        for service, url in targets:
            engine = engines.setdefault(url, make_engine(url))
            done = migrations.upgrade(engine, service, service_metadata(service))
            print(f"{done.summary()}  ({_shown(url)})")
    except migrations.SchemaNotCurrent as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for engine in engines.values():
            engine.dispose()
    return 0


@cli.command("current", short_help="each service's schema revision and the head; exit 1 if behind")
def current(services: Services = None) -> int:
    """Each service's schema revision, the head this version knows, whether it is current,
    and its database (password hidden). Exit 1 if any is behind."""
    from app.bootstrap import service_metadata
    from app.persistence import migrations
    from app.persistence.db import make_engine

    rows, behind = [], False
    for service, url in _service_databases(services):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                found = migrations.state(conn, service, service_metadata(service))
                at = migrations.current(conn, service) if found == migrations.MANAGED else None
        finally:
            engine.dispose()
        head = migrations.head(service)
        behind = behind or at != head
        rows.append((service, at or f"({found})", head, "yes" if at == head else "no", _shown(url)))
    print_table(rows, ("service", "revision", "head", "current", "database"))
    return 1 if behind else 0


@cli.command("history", short_help="each service's migrations, newest first")
def history(services: Services = None) -> int:
    """Each service's migrations, newest first: revision, the one it follows, and what it does."""
    from app.persistence import migrations

    rows = []
    for service in SERVICE_NAMES:
        if services and service not in services:
            continue
        for script in migrations.history(service):
            rows.append((service, script.revision, script.down_revision or "", script.doc.splitlines()[0]))
    print_table(rows, ("service", "revision", "after", "what"))
    return 0
