"""Schema migrations on PostgreSQL (a fresh database per test), through ``python -m app db``
as an operator runs it.

* On an empty database ``db upgrade`` creates every service's tables and records each
  service's head in its own version table; the system then runs on it (an order placed
  in embedded mode completes, the auditor is clean). A second ``db upgrade`` changes
  nothing. Four services on four databases are each upgraded in their own.
* The migrations and the code agree: after ``db upgrade``, Alembic's comparison of each
  service's tables with its metadata finds no difference — this fails when a table or
  column is added to the code without a migration. ``db upgrade --sql`` prints a script
  that builds the same schema.
* In place: a database at the previous revision, holding orders, is upgraded to the head
  with every row kept.
* A database made before migrations (tables, no version table) is adopted, data kept.
* Two ``db upgrade`` at once on one empty database: both succeed, one does the work.
* A worker's start-up (``create_schema``) refuses a database that is behind, naming
  ``db upgrade``.
* The analytics extension's tables have a line of their own: ``db upgrade`` builds them (at
  their head, as the code expects them) only when ``CHECKOUT_EXTENSIONS`` names analytics,
  on an empty database or on one whose services are already at their heads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, func, inspect, select

from app.api import System, validate_order
from app.bootstrap import SERVICE_MODULES, service_metadata
from app.operations.audit import audit
from app.persistence import migrations
from app.persistence.db import Database
from app.services.order import OrderService, orders
from config.settings import SERVICES, Settings
from tests.support.cluster import REPO_ROOT, postgres_database
from tests.support.schema import diffs, revisions

pytestmark = [pytest.mark.brokers, pytest.mark.timeout(180)]


def app_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def cli_env(**urls: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update({f"CHECKOUT_{name.upper()}": url for name, url in urls.items()})
    return env


@pytest.fixture
def pg() -> Iterator[tuple[str, Engine]]:
    with postgres_database() as url:
        engine = create_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


def heads() -> dict[str, str]:
    return {service: migrations.head(service) for service in SERVICES}


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    """Every table's columns and indexes, as PostgreSQL reports them."""
    inspector = inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name)),
        )
        for name in sorted(inspector.get_table_names())
    }


def place_orders(url: str, count: int) -> list[str]:
    """Orders written by the order service alone (no saga runs: no broker involved)."""
    engine = create_engine(url)
    try:
        db = Database("order", engine, SERVICE_MODULES["order"].metadata, SERVICE_MODULES["order"].tables)
        service = OrderService(db)
        service.seed()
        return [
            service.place(validate_order(f"migrate-{n}", items=[{"sku": "MUG-01", "qty": n + 1}]))[0]
            for n in range(count)
        ]
    finally:
        engine.dispose()


def order_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every order by id, with each column the table has now (a downgrade drops the newer ones)."""
    with engine.connect() as conn:
        have = {c["name"] for c in inspect(conn).get_columns(orders.name)}
        query = select(*(c for c in orders.columns if c.name in have)).order_by(orders.c.order_id)
        return [dict(r._mapping) for r in conn.execute(query).all()]


def narrowed(rows: list[dict[str, Any]], like: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with only the columns of ``like``'s rows."""
    return [{name: row[name] for name in like[0]} for row in rows]


def test_upgrade_on_an_empty_database_creates_every_table_and_the_system_runs(
    pg: tuple[str, Engine], tmp_path: Any
) -> None:
    url, engine = pg
    done = app_cli("db", "upgrade", env=cli_env(database_url=url))
    assert done.returncode == 0, done.stderr
    for service in SERVICES:
        assert f"{service}: empty -> {migrations.head(service)}" in done.stdout, done.stdout
    tables = set(inspect(engine).get_table_names())
    expected = {name for s in SERVICES for name in service_metadata(s).tables}
    assert expected | {migrations.version_table(s) for s in SERVICES} == tables
    assert revisions(engine) == heads()
    assert all(diffs(engine, s) == [] for s in SERVICES)

    # A second upgrade changes nothing.
    before = schema_snapshot(engine)
    again = app_cli("db", "upgrade", env=cli_env(database_url=url))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("nothing to do") == len(SERVICES), again.stdout
    assert schema_snapshot(engine) == before
    current = app_cli("db", "current", env=cli_env(database_url=url))
    assert current.returncode == 0 and current.stdout.count(" yes ") == len(SERVICES), current.stdout

    # The system runs on it: an order through the whole saga, embedded, on this database.
    running = System(Settings(data_dir=tmp_path, database_url=url)).start()
    try:
        order_id = running.runtime.order.place(validate_order("migrated", items=[{"sku": "TEE-01", "qty": 2}]))[0]
        rt = running.runtime
        report = audit(rt, settle=30)
        assert rt.order.view(order_id).status == "COMPLETED", rt.order.view(order_id)
        assert report.clean, report.violations
    finally:
        running.stop()
    assert revisions(engine) == heads()  # the workers changed nothing


def test_the_migrations_build_what_the_code_expects(pg: tuple[str, Engine]) -> None:
    """Fails when a table, column, index or type changes in the code without a migration."""
    url, engine = pg
    for service in SERVICES:
        migrations.upgrade(engine, service, service_metadata(service))
    drift = {service: found for service in SERVICES if (found := diffs(engine, service))}
    assert not drift, (
        f"the code's tables differ from what the migrations build: {drift}\n"
        "write a migration (README: Schema migrations)"
    )


def test_the_sql_script_builds_the_same_schema(pg: tuple[str, Engine]) -> None:
    url, engine = pg
    done = app_cli("db", "upgrade", "--sql", env=cli_env(database_url=url))
    assert done.returncode == 0, done.stderr
    assert inspect(engine).get_table_names() == [], "--sql must not touch the database"
    with engine.connect() as conn:
        conn.connection.driver_connection.execute(done.stdout)  # type: ignore[union-attr]
        conn.commit()
    assert revisions(engine) == heads()
    assert all(diffs(engine, s) == [] for s in SERVICES)


def test_an_upgrade_in_place_keeps_the_data(pg: tuple[str, Engine]) -> None:
    """Orders placed, then the schema taken back to the first revision (as a database of the
    first release holds them): the upgrade brings it to the head with every row kept."""
    url, engine = pg
    with engine.connect() as conn, conn.begin():
        for service in SERVICES:
            command.upgrade(migrations.config(service, service_metadata(service), connection=conn), "head")
    placed = place_orders(url, 5)
    rows = order_rows(engine)
    with engine.connect() as conn, conn.begin():
        for service in SERVICES:
            cfg = migrations.config(service, service_metadata(service), connection=conn)
            command.downgrade(cfg, migrations.baseline(service))
    assert revisions(engine)["order"] == "order_0001" != heads()["order"]
    assert len(rows) == 5 and {r["order_id"] for r in rows} == set(placed)
    at_baseline = order_rows(engine)
    assert at_baseline == narrowed(rows, at_baseline)  # the columns the first revision has, untouched
    assert "ix_order_orders_created_at" not in {i["name"] for i in inspect(engine).get_indexes("order_orders")}

    done = app_cli("db", "upgrade", env=cli_env(database_url=url))
    assert done.returncode == 0, done.stderr
    assert f"order: order_0001 -> {migrations.head('order')}" in done.stdout, done.stdout
    assert revisions(engine) == heads()
    assert order_rows(engine) == rows
    assert {r["saga_version"] for r in order_rows(engine)} == {1}  # from before it was kept: version 1
    assert "ix_order_orders_created_at" in {i["name"] for i in inspect(engine).get_indexes("order_orders")}
    assert all(diffs(engine, s) == [] for s in SERVICES)


def test_a_database_from_before_migrations_is_adopted(pg: tuple[str, Engine]) -> None:
    """Tables as the workers of a version without migrations made them (``create_all``),
    one of them missing and a newer nullable column absent — adopted, nothing lost."""
    url, engine = pg
    with engine.begin() as conn:
        for service in SERVICES:
            metadata = service_metadata(service)
            metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t.name != "shipping_readiness"])
    placed = place_orders(url, 3)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_order_orders_created_at")
        conn.exec_driver_sql("ALTER TABLE order_timeline DROP COLUMN duration_ms")
    rows = order_rows(engine)
    assert revisions(engine) == dict.fromkeys(SERVICES)

    done = app_cli("db", "upgrade", env=cli_env(database_url=url))
    assert done.returncode == 0, done.stderr
    for service in SERVICES:
        assert f"{service}: adopted existing tables at {migrations.baseline(service)}" in done.stdout, done.stdout
    assert revisions(engine) == heads()
    assert order_rows(engine) == rows and {r["order_id"] for r in rows} == set(placed)
    assert all(diffs(engine, s) == [] for s in SERVICES)


def test_four_databases_are_each_upgraded() -> None:
    with ExitStack() as stack:
        urls = {s: stack.enter_context(postgres_database()) for s in SERVICES}
        done = app_cli("db", "upgrade", env=cli_env(**{f"{s}_database_url": u for s, u in urls.items()}))
        assert done.returncode == 0, done.stderr
        for service, url in urls.items():
            engine = create_engine(url)
            try:
                tables = set(inspect(engine).get_table_names())
                mine = set(service_metadata(service).tables) | {migrations.version_table(service)}
                assert tables == mine, (service, tables)
                assert diffs(engine, service) == []
            finally:
                engine.dispose()


def test_two_upgrades_at_once_both_succeed(pg: tuple[str, Engine]) -> None:
    url, engine = pg
    argv = [sys.executable, "-m", "app", "db", "upgrade"]
    env = cli_env(database_url=url)
    procs = [
        subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    created = sum(out.count("empty ->") for out, _ in outputs)
    assert created == len(SERVICES), outputs  # each service migrated once, by one of them
    assert revisions(engine) == heads()


def test_a_database_behind_is_refused_at_start_up(pg: tuple[str, Engine]) -> None:
    url, engine = pg
    with engine.connect() as conn, conn.begin():
        command.upgrade(migrations.config("order", service_metadata("order"), connection=conn), "order_0001")
    db = Database("order", engine, SERVICE_MODULES["order"].metadata, SERVICE_MODULES["order"].tables)
    with pytest.raises(
        migrations.SchemaNotCurrent, match=rf"order_0001.*needs {migrations.head('order')}.*python -m app db upgrade"
    ):
        db.create_schema()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(orders)).scalar() == 0
    assert "ix_order_orders_created_at" not in {i["name"] for i in inspect(engine).get_indexes("order_orders")}


def analytics_tables(engine: Engine) -> set[str]:
    return {name for name in inspect(engine).get_table_names() if "analytics" in name}


@pytest.mark.timeout(180)
def test_the_analytics_tables_are_migrated_when_the_extension_is_named(pg: tuple[str, Engine]) -> None:
    expected = set(service_metadata("analytics").tables) | {"alembic_version_analytics"}
    assert {"analytics_orders", "analytics_inbox"} <= expected
    with postgres_database() as other_url:
        # Named: an empty database gets the services' tables and the extension's.
        with_ext = app_cli("db", "upgrade", env=cli_env(database_url=other_url, extensions="analytics"))
        assert with_ext.returncode == 0, with_ext.stderr
        assert f"analytics: empty -> {migrations.head('analytics')}" in with_ext.stdout, with_ext.stdout
        assert all(f"{s}: empty -> {migrations.head(s)}" in with_ext.stdout for s in SERVICES), with_ext.stdout
        other = create_engine(other_url)
        try:
            assert analytics_tables(other) == expected
            with other.connect() as conn:
                assert migrations.current(conn, "analytics") == migrations.head("analytics")
            assert diffs(other, "analytics") == []
            assert revisions(other) == heads() and all(diffs(other, s) == [] for s in SERVICES)
        finally:
            other.dispose()

    # Not named: no analytics table, no version table.
    url, engine = pg
    done = app_cli("db", "upgrade", env=cli_env(database_url=url))
    assert done.returncode == 0, done.stderr
    assert "analytics" not in done.stdout, done.stdout
    assert analytics_tables(engine) == set()
    assert revisions(engine) == heads()
    current = app_cli("db", "current", env=cli_env(database_url=url))
    assert current.returncode == 0 and "analytics" not in current.stdout, current.stdout

    # Named later: only the extension's line runs; the services have nothing to do.
    before = schema_snapshot(engine)
    added = app_cli("db", "upgrade", env=cli_env(database_url=url, extensions="analytics"))
    assert added.returncode == 0, added.stderr
    assert f"analytics: empty -> {migrations.head('analytics')}" in added.stdout, added.stdout
    assert added.stdout.count("nothing to do") == len(SERVICES), added.stdout
    assert analytics_tables(engine) == expected
    assert {k: v for k, v in schema_snapshot(engine).items() if "analytics" not in k} == before
    assert diffs(engine, "analytics") == []
    current = app_cli("db", "current", env=cli_env(database_url=url, extensions="analytics"))
    assert current.returncode == 0 and current.stdout.count(" yes ") == len(SERVICES) + 1, current.stdout
    assert migrations.head("analytics") in current.stdout, current.stdout


def test_a_command_on_a_database_behind_says_what_to_run_in_one_line(pg: tuple[str, Engine]) -> None:
    url, engine = pg
    with engine.connect() as conn, conn.begin():
        for service in SERVICES:
            command.upgrade(migrations.config(service, service_metadata(service), connection=conn), "head")
        command.downgrade(migrations.config("order", service_metadata("order"), connection=conn), "order_0001")
    done = app_cli("catalog", env=cli_env(database_url=url))
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: the order service's tables are at revision order_0001; this version needs {migrations.head('order')}: "
        "run `python -m app db upgrade`"
    ], done.stderr
