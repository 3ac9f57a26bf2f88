"""Schema migrations on SQLite (no server): create_schema records the head, the
migrations build what the code expects, and a database behind is refused. The same on
PostgreSQL, through the command line: tests/brokers/test_migrations.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect

from app.bootstrap import SERVICE_MODULES, service_metadata
from app.persistence import migrations
from app.persistence.db import Database, make_engine
from config.settings import SERVICES
from tests.support.schema import diffs, revisions


def database(engine: Engine, service: str) -> Database:
    module = SERVICE_MODULES[service]
    return Database(service, engine, module.metadata, module.tables)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'migrations.db'}")
    yield engine
    engine.dispose()


def test_every_service_has_one_line_of_migrations_from_its_baseline() -> None:
    for service in SERVICES:
        chain = list(migrations.history(service))
        assert chain[-1].revision == migrations.baseline(service) and chain[-1].down_revision is None
        assert migrations.head(service) == chain[0].revision
        assert all(s.revision.startswith(f"{service}_") for s in chain)


def test_create_schema_on_an_empty_database_records_the_head(engine: Engine) -> None:
    for service in SERVICES:
        database(engine, service).create_schema()
    assert revisions(engine) == {s: migrations.head(s) for s in SERVICES}
    for service in SERVICES:
        database(engine, service).create_schema()  # at the head: nothing to do
        assert diffs(engine, service) == []


def test_the_migrations_build_what_the_code_expects_on_sqlite(engine: Engine) -> None:
    for service in SERVICES:
        done = migrations.upgrade(engine, service, service_metadata(service))
        assert (done.before, done.after, done.adopted) == (None, migrations.head(service), False)
    drift = {s: found for s in SERVICES if (found := diffs(engine, s))}
    assert not drift, f"write a migration (README: Schema migrations): {drift}"
    again = migrations.upgrade(engine, "order", service_metadata("order"))
    assert again.summary() == f"order: at {migrations.head('order')}, nothing to do"


def test_a_database_behind_or_missing_a_column_is_refused(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        command.upgrade(migrations.config("order", service_metadata("order"), connection=conn), "order_0001")
    with pytest.raises(migrations.SchemaNotCurrent, match="python -m app db upgrade"):
        database(engine, "order").create_schema()
    migrations.upgrade(engine, "order", service_metadata("order"))
    database(engine, "order").create_schema()

    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("ALTER TABLE order_timeline DROP COLUMN duration_ms")
    with pytest.raises(migrations.SchemaNotCurrent, match="order_timeline lacks duration_ms.*no migration"):
        database(engine, "order").create_schema()


def test_a_database_from_before_migrations_keeps_working_and_is_adopted_on_upgrade(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        service_metadata("payment").create_all(conn)
    database(engine, "payment").create_schema()  # as before: no version table recorded
    assert revisions(engine)["payment"] is None
    assert migrations.version_table("payment") not in inspect(engine).get_table_names()
    done = migrations.upgrade(engine, "payment", service_metadata("payment"))
    assert done.adopted and done.after == migrations.head("payment")
    assert diffs(engine, "payment") == []
