"""The sales analytics extension (``CHECKOUT_EXTENSIONS=analytics``) against real worker
processes, with PostgreSQL.

* Live, on Redis and on RabbitMQ: with the four services and an analytics worker
  (``celery -A workers.analytics worker -Q analytics``) running, a mix of orders that
  complete and are cancelled for different reasons; analytics records each ended order
  once, as the order service tells it (outcome, total, currency, reason, UTC day), and
  ``sales_by_day`` sums them up exactly. Only the analytics worker runs ``analytics.handle``,
  and its inbox holds each end event once.
* History, on Redis: orders run while no process has the extension, so nothing is
  delivered to it and it has no tables. Then the extension is added (its tables, its queue
  and its worker, with ``CHECKOUT_EXTENSIONS=analytics``) and ``python -m app replay --type
  OrderCompleted --type OrderCancelled --to analytics.handle`` feeds it the event logs:
  every ended order is recorded, ``python -m app analytics --json`` prints the same sales,
  and a second replay is absorbed by the inbox (reported as handled already, nothing
  changes).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Connection, func, inspect, select

from app.analytics import CANCELLED, COMPLETED, NAME, DaySales, ended, metadata, sales_by_day
from app.api import System, validate_order
from app.bootstrap import Runtime
from app.domain.events import Envelope
from app.operations.audit import audit
from app.persistence.db import Database
from app.services.order import TERMINAL
from config.settings import SERVICES, Settings
from tests.conftest import wait_until
from tests.support.cluster import REPO_ROOT, BrokerNamespace, ClusterError, Workers

TASK = f"{NAME}.handle"
END_EVENTS = ("OrderCompleted", "OrderCancelled")
REPLAY_ARGS = ("replay", "--type", "OrderCompleted", "--type", "OrderCancelled", "--to", TASK)

#: The orders of each test: their inputs, and the reason each is cancelled (None: completes).
#: Never POSTER-01 but in the one order above its stock of 25.
MIX: tuple[tuple[dict[str, Any], str | None], ...] = (
    ({"items": [{"sku": "MUG-01", "qty": 2}]}, None),
    ({"items": [{"sku": "BOOK-01", "qty": 1}, {"sku": "TEE-01", "qty": 3}]}, None),
    ({"items": [{"sku": "LAMP-01", "qty": 1}]}, None),
    ({"items": [{"sku": "TEE-01", "qty": 1}, {"sku": "MUG-01", "qty": 4}]}, None),
    ({"items": [{"sku": "BOOK-01", "qty": 2}]}, None),
    ({"items": [{"sku": "MUG-01", "qty": 1}], "payment_token": "tok_declined"}, "card_declined"),
    ({"items": [{"sku": "LAMP-01", "qty": 2}], "payment_token": "tok_declined"}, "card_declined"),
    ({"items": [{"sku": "POSTER-01", "qty": 26}]}, "out_of_stock"),
    ({"items": [{"sku": "TEE-01", "qty": 2}], "ship_to": {"country": "AQ"}}, "shipping_unavailable"),
)
COMPLETING = sum(1 for _, reason in MIX if reason is None)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"extensions": NAME}


def node(name: str) -> str:
    return f"{name}@{socket.gethostname()}"


def app_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def start_analytics_worker(workers: Workers, env: dict[str, str], control: Celery, log: Path) -> None:
    workers.start(NAME, env, log)
    try:
        workers.wait_ready(control)
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


def place_mix(system: System, customer: str) -> list[str]:
    placed = []
    for n, (args, _reason) in enumerate(MIX):
        order_id, created = system.runtime.order.place(validate_order(f"{customer}-{n}", **args))
        assert created
        placed.append(order_id)
    return placed


def wait_ended(system: System, order_ids: list[str], workers: Workers) -> None:
    """Until every order is terminal and the auditor finds nothing; then check that each
    ended as its input says."""
    rt = system.runtime
    wait_until(
        lambda: all(rt.order.status(o) in TERMINAL for o in order_ids) and audit(rt).clean,
        timeout=120,
        interval=0.2,
        what="every order to end, audit clean",
        diagnostics=lambda: f"{audit(rt).violations}\n{workers.tails()}",
    )
    outcomes = [(rt.order.view(o).status, rt.order.view(o).reason) for o in order_ids]
    assert outcomes == [("CANCELLED", r) if r else ("COMPLETED", None) for _, r in MIX]


def end_events(rt: Runtime, order_ids: list[str]) -> dict[str, Envelope]:
    """Each order's one end event, from the order service's log."""
    found: dict[str, list[Envelope]] = defaultdict(list)
    for env in rt.databases["order"].log():
        if env.event_type in END_EVENTS:
            found[env.key].append(env)
    assert sorted(found) == sorted(order_ids)
    assert all(len(events) == 1 for events in found.values()), found
    return {order_id: events[0] for order_id, events in found.items()}


def as_json(days: list[DaySales]) -> list[dict[str, Any]]:
    """Sales as ``python -m app analytics --json`` prints them."""
    return [d.as_json() for d in days]


def expected_rows(rt: Runtime, order_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """What analytics must hold of each order, from the order service's views and the day
    its end event occurred (UTC): (outcome, reason, total_cents, currency, day)."""
    ends = end_events(rt, order_ids)
    rows: dict[str, tuple[Any, ...]] = {}
    for order_id in order_ids:
        view = rt.order.view(order_id)
        day = ends[order_id].occurred_at.astimezone(UTC).date().isoformat()
        if view.status == "COMPLETED":
            rows[order_id] = (COMPLETED, None, view.total_cents, view.currency, day)
        else:
            rows[order_id] = (CANCELLED, view.reason, None, None, day)
    return rows


def expected_sales(rows: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    days: dict[str, DaySales] = {}
    for outcome, reason, total, currency, day in rows.values():
        sales = days.setdefault(day, DaySales(day))
        if outcome == COMPLETED:
            sales.completed += 1
            sales.revenue_cents[currency] += total
        else:
            sales.cancelled += 1
            sales.reasons[reason] += 1
    return as_json([days[day] for day in sorted(days)])


def recorded(db: Database) -> dict[str, tuple[Any, ...]]:
    columns = (ended.c.order_id, ended.c.outcome, ended.c.reason, ended.c.total_cents, ended.c.currency, ended.c.day)
    rows = db.query(lambda c: c.execute(select(*columns)).all())
    return {r[0]: tuple(r[1:]) for r in rows}


def recorded_count(db: Database) -> int:
    return int(db.query(lambda c: c.execute(select(func.count()).select_from(ended)).scalar_one()))


def everything(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the extension's tables (timestamps included)."""

    def rows(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
        return {name: sorted(tuple(r) for r in conn.execute(select(t)).all()) for name, t in metadata.tables.items()}

    return db.query(rows)


def inbox(db: Database) -> list[tuple[str, str]]:
    table = db.tables.inbox
    return sorted(tuple(r) for r in db.query(lambda c: c.execute(select(table.c.consumer, table.c.event_id)).all()))


def check_recorded(rt: Runtime, db: Database, order_ids: list[str]) -> list[dict[str, Any]]:
    """Analytics holds each order exactly as it ended, once, and sums them up exactly;
    returns the expected sales."""
    rows = expected_rows(rt, order_ids)
    assert recorded(db) == rows
    sales = expected_sales(rows)
    found = sales_by_day(db)
    assert as_json(found) == sales
    assert sum(d.completed for d in found) == COMPLETING
    assert sum(d.ended for d in found) == len(MIX)
    reasons = sum((Counter(d.reasons) for d in found), Counter[str]())
    assert reasons == Counter(r for _, r in MIX if r)
    revenue = sum((Counter(d.revenue_cents) for d in found), Counter[str]())
    completed = [rt.order.view(o) for o in order_ids if rt.order.view(o).status == "COMPLETED"]
    assert revenue == Counter({"EUR": sum(v.total_cents for v in completed)}) and revenue["EUR"] > 0
    ends = end_events(rt, order_ids)
    assert inbox(db) == sorted((TASK, env.event_id) for env in ends.values())
    assert db.query(lambda c: c.execute(select(func.count()).select_from(db.tables.dead_letters)).scalar_one()) == 0
    return sales


def tasks_run(control: Celery) -> dict[str, Counter[str]]:
    """Each worker node, and how many of each task it has accepted since it started."""
    stats = control.control.inspect(timeout=2.0).stats() or {}
    return {name: Counter(s.get("total", {})) for name, s in stats.items()}


def idle_after(control: Celery, name: str, accepted: int) -> bool:
    """True once worker ``name`` has accepted ``accepted`` tasks and runs or holds none."""
    inspector = control.control.inspect(destination=[node(name)], timeout=2.0)
    total = sum(tasks_run(control).get(node(name), Counter()).values())
    if total < accepted:
        return False
    busy = [*((inspector.active() or {}).get(node(name), [])), *((inspector.reserved() or {}).get(node(name), []))]
    return not busy


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_analytics_worker_follows_orders_live(
    system: System, workers: Workers, process_env: dict[str, str], tmp_path: Path
) -> None:
    rt = system.runtime
    assert list(rt.extensions) == [NAME]
    assert process_env["CHECKOUT_EXTENSIONS"] == NAME
    assert TASK in rt.consumers_of("OrderCompleted") and TASK in rt.consumers_of("OrderCancelled")
    start_analytics_worker(workers, process_env, rt.celery, tmp_path / "worker-analytics.log")

    order_ids = place_mix(system, "live")
    wait_ended(system, order_ids, workers)
    db = rt.databases[NAME]
    wait_until(
        lambda: recorded_count(db) == len(order_ids),
        timeout=60,
        interval=0.1,
        what="analytics to record every ended order",
        diagnostics=lambda: f"recorded {recorded(db)}\n{workers.tails()}",
    )
    check_recorded(rt, db, order_ids)

    # Delivered on its own queue: only the analytics worker ran its task, and it ran nothing else.
    run = tasks_run(rt.celery)
    assert set(run) == {node(name) for name in (*SERVICES, NAME)}, run
    assert set(run[node(NAME)]) == {TASK} and run[node(NAME)][TASK] >= len(order_ids), run
    assert all(TASK not in run[node(service)] for service in SERVICES), run


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.parametrize("settings_overrides", [{}], ids=["history-before-analytics"])
def test_replay_feeds_a_new_analytics_worker_its_history(
    system: System,
    workers: Workers,
    process_env: dict[str, str],
    broker: BrokerNamespace,
    database: str,
    saga_mode: str,
    tmp_path: Path,
) -> None:
    """The orders run on a system without the extension (no process names it, so the relay
    delivers nothing to it and it has no tables, queue or worker): that is its history. The
    extension is then added as an operator adds it — ``CHECKOUT_EXTENSIONS=analytics`` in
    the environment of its worker and of the commands, its tables and queue declared —
    while the four service workers keep running, and replay is the only way the orders
    reach it."""
    rt = system.runtime
    assert not rt.extensions and "CHECKOUT_EXTENSIONS" not in process_env
    order_ids = place_mix(system, "history")
    wait_ended(system, order_ids, workers)
    assert not [t for t in inspect(rt.databases["order"].engine).get_table_names() if t.startswith(f"{NAME}_")]

    refused = app_cli(*REPLAY_ARGS, env=process_env)
    assert refused.returncode == 2 and f"unknown consumer '{TASK}'" in refused.stderr, refused.stdout + refused.stderr
    off = app_cli(NAME, "--json", env=process_env)
    assert off.returncode == 2 and "sales analytics is not on" in off.stderr, off.stdout + off.stderr

    env = {**process_env, "CHECKOUT_EXTENSIONS": NAME}
    added = Runtime(
        Settings(
            broker_url=broker.url,
            database_url=database,
            namespace=broker.namespace,
            saga_mode=saga_mode,
            extensions=NAME,
        )
    )
    try:
        added.prepare((NAME,))
        added.declare_queues()
        start_analytics_worker(workers, env, added.celery, tmp_path / "worker-analytics.log")
        db = added.databases[NAME]
        assert recorded_count(db) == 0 and inbox(db) == [] and sales_by_day(db) == []

        first = app_cli(*REPLAY_ARGS, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        cancelled = len(MIX) - COMPLETING
        sent = f"{len(MIX)} events sent to {TASK} (OrderCancelled {cancelled}, OrderCompleted {COMPLETING}), 0 skipped"
        assert first.stdout.startswith(sent), first.stdout
        assert "handled" not in first.stdout, first.stdout
        wait_until(
            lambda: recorded_count(db) == len(order_ids),
            timeout=60,
            interval=0.1,
            what="analytics to record every replayed order",
            diagnostics=lambda: f"recorded {recorded(db)}\n{workers.tails()}",
        )
        sales = check_recorded(added, db, order_ids)
        wait_until(
            lambda: idle_after(added.celery, NAME, len(MIX)),
            timeout=30,
            interval=0.2,
            what="the analytics worker to finish the first replay",
            diagnostics=workers.tails,
        )
        before = everything(db)

        second = app_cli(*REPLAY_ARGS, env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert second.stdout.startswith(sent), second.stdout
        assert f"{TASK} has handled {len(MIX)} of them already" in second.stdout, second.stdout
        assert "0 may take effect" in second.stdout, second.stdout
        wait_until(
            lambda: idle_after(added.celery, NAME, 2 * len(MIX)),
            timeout=60,
            interval=0.2,
            what="the analytics worker to take the second replay",
            diagnostics=workers.tails,
        )
        assert everything(db) == before
        assert check_recorded(added, db, order_ids) == sales
        run = tasks_run(added.celery)
        assert run[node(NAME)] == Counter({TASK: 2 * len(MIX)}), run

        printed = app_cli(NAME, "--json", env=env)
        assert printed.returncode == 0, printed.stdout + printed.stderr
        assert json.loads(printed.stdout) == sales
    finally:
        added.close()
