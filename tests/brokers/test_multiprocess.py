"""The checkout across real processes: each service a separate ``celery worker`` on Redis
or RabbitMQ, every service's tables in one database, orders placed from this process.

One test per broker places 200 orders mixing every row of the test vocabulary
(``app/cli/demo.py``) with PostgreSQL, waits until every order is terminal, checks that each
one ended as its input predicts, runs the auditor, and reports the throughput in sagas per
second. One more test does the same with 60 orders on Redis with SQLite instead: the four
worker processes and this one share one SQLite file (WAL, ``BEGIN IMMEDIATE``, busy timeout).

Every run also checks the dead letters: each ``tok_down`` order leaves exactly one (its
exhausted ``payment.authorize``), no other order any; on RabbitMQ that message really went
through the broker's dead-letter exchange into ``payment.dlq``, and the other ``.dlq`` queues
stay empty. The helpers here are shared with ``test_dead_letters.py``.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.adapters.fake_gateway import FLAKY_FAILURES, ledger
from app.api import System, validate_order
from app.cli.demo import CASES
from app.domain.catalog import CATALOG
from app.domain.subscriptions import MODES
from app.operations.audit import Report, audit
from app.operations.dlq import DeadLetterOps
from app.persistence.deadletters import DEAD, DeadLetter
from app.services.order import orders
from config.celery import EXCHANGE, dead_letter_queue_name
from config.settings import SERVICES
from tests.conftest import wait_until
from tests.support.cluster import (
    WORKER_CONCURRENCY,
    BrokerNamespace,
    Workers,
    rabbitmq_queues,
    redis_keys,
    redis_members,
)

PRICES = {p.sku: p.price_cents for p in CATALOG}

#: Baskets for the orders that should go through (never POSTER-01: its 25 units of stock
#: must stay out of play so that "qty > stock" is the only stock failure).
OK_BASKETS: list[list[dict[str, Any]]] = [
    [{"sku": "MUG-01", "qty": 2}, {"sku": "TEE-01", "qty": 1}],
    [{"sku": "BOOK-01", "qty": 1}],
    [{"sku": "LAMP-01", "qty": 1}, {"sku": "MUG-01", "qty": 1}],
    [{"sku": "TEE-01", "qty": 3}],
]


@dataclass(frozen=True)
class Row:
    """One row of the test vocabulary: what to send and what must come of it."""

    label: str  # as in app.cli.demo.CASES
    status: str
    reason: str | None
    count: int  # how many orders of the run
    kwargs: dict[str, Any] = field(default_factory=dict)


VOCABULARY: tuple[Row, ...] = (
    Row("tok_ok", "COMPLETED", None, 150),
    Row("tok_declined", "CANCELLED", "card_declined", 14, {"payment_token": "tok_declined"}),
    Row("tok_flaky", "COMPLETED", None, 14, {"payment_token": "tok_flaky"}),
    # ~5 s of retries each before the step gives up; a few are enough.
    Row("tok_down", "CANCELLED", "payment_unavailable", 3, {"payment_token": "tok_down"}),
    Row("qty > stock", "CANCELLED", "out_of_stock", 10, {"items": [{"sku": "POSTER-01", "qty": 999}]}),
    Row("ship to AQ", "CANCELLED", "shipping_unavailable", 9, {"ship_to": {"country": "AQ"}}),
)
TOTAL_ORDERS = 200

#: The same rows, 60 orders: the SQLite run (one file, every process writing to it).
SQLITE_VOCABULARY: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, count, row.kwargs)
    for row, count in zip(VOCABULARY, (36, 6, 6, 3, 5, 4), strict=True)
)
SQLITE_TOTAL_ORDERS = 60

TERMINAL_TIMEOUT = 240.0
AUDIT_SETTLE = 30.0


@dataclass(frozen=True)
class Placed:
    order_id: str
    row: Row
    items: list[dict[str, Any]]

    @property
    def total_cents(self) -> int:
        return sum(PRICES[line["sku"]] * line["qty"] for line in self.items)


def order_plan(
    vocabulary: tuple[Row, ...] = VOCABULARY, seed: int = 20240601, orders: int | None = None
) -> list[tuple[Row, dict[str, Any]]]:
    """The orders' inputs, rows interleaved in a fixed pseudo-random order; with ``orders``,
    each row's count scaled to make about that many in all (every row at least once)."""
    total = sum(row.count for row in vocabulary)
    plan: list[tuple[Row, dict[str, Any]]] = []
    for row in vocabulary:
        count = row.count if orders is None else max(1, round(row.count * orders / total))
        for n in range(count):
            args = {"items": OK_BASKETS[n % len(OK_BASKETS)], **row.kwargs}
            plan.append((row, args))
    random.Random(seed).shuffle(plan)
    return plan


def place_all(
    system: System,
    plan: list[tuple[Row, dict[str, Any]]],
    customer: str,
    after_each: Callable[[int], None] | None = None,
) -> list[Placed]:
    """Place every order of ``plan``; ``after_each(n)`` runs after the n-th (0-based) one."""
    placed = []
    for n, (row, args) in enumerate(plan):
        order_id, created = system.runtime.order.place(validate_order(f"{customer}-{n}", **args))
        assert created, f"order {n} ({row.label}) was not created"
        placed.append(Placed(order_id, row, args["items"]))
        if after_each is not None:
            after_each(n)
    return placed


def wait_all_terminal(system: System, order_ids: list[str], workers: Workers, timeout: float) -> None:
    """Until no order is PENDING (each poll re-reads only those still pending)."""
    pending = set(order_ids)

    def none_pending() -> bool:
        for order_id in list(pending):
            if system.runtime.order.status(order_id) != "PENDING":
                pending.discard(order_id)
        return not pending

    def diagnostics() -> str:
        rt = system.runtime
        lines = [f"{len(pending)} order(s) still PENDING:"]
        for order_id in sorted(pending)[:5]:
            view = rt.order.view(order_id)
            lines.append(f"  {order_id}: steps {view.steps}, events {[e.type for e in view.events]}")
            for letter in rt.dead_letters.find(order_id=order_id):
                lines.append(f"    dead letter {letter.task}: {letter.reason}")
        return "\n".join(lines) + "\n" + workers.tails()

    wait_until(
        none_pending,
        timeout=timeout,
        interval=0.1,
        what=f"{len(order_ids)} orders to reach COMPLETED or CANCELLED",
        diagnostics=diagnostics,
    )


def authorize_attempts(system: System) -> dict[str, int]:
    """The fake gateway's own count of authorization attempts, per order."""
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(
            select(ledger.c.reference, ledger.c.attempts).where(ledger.c.operation == "authorize")
        ).all()
    )
    return {r.reference: r.attempts for r in rows}


def assert_namespaced(broker: BrokerNamespace, placed: list[Placed], saga_mode: str = "orchestration") -> None:
    """The run's messages and results live in its own namespace, nowhere else."""
    if broker.kind == "redis":
        # kombu keeps an exchange's bindings in a set "_kombu.binding.<exchange>" whose
        # members end with the queue name: every service queue is bound under the prefix.
        key = f"{broker.namespace}:_kombu.binding.{EXCHANGE.name}"
        bound = {member.rsplit("\x06\x16", 1)[-1] for member in redis_members(key)}
        assert set(SERVICES) <= bound, f"{key} binds {sorted(bound)}, not every service queue"
        if saga_mode != "orchestration":  # no canvas, no results kept
            return
        # The forward steps store their results (the chord needs them): under the prefix only.
        sample = placed[0].order_id
        results = redis_keys(f"*celery-task-meta-{sample}*")
        assert results, f"no result keys at all for order {sample}"
        outside = [k for k in results if not k.startswith(f"{broker.namespace}:")]
        assert not outside, f"result keys written outside the namespace {broker.namespace}: {outside}"
    else:
        assert broker.vhost is not None
        queues = rabbitmq_queues(broker.vhost)
        missing = set(SERVICES) - set(queues)
        assert not missing, f"service queues {sorted(missing)} not in vhost {broker.vhost}: {queues}"


def run_mixed_orders(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    vocabulary: tuple[Row, ...],
    total: int,
    label: str,
    record_property: Any,
) -> list[Placed]:
    """Place ``total`` orders over ``vocabulary``, wait until all are terminal, and check
    each outcome, the gateway's retry counts, the auditor and the namespace."""
    labels = {row.label for row in vocabulary}
    missing = {label for label, _, _ in CASES} - labels
    assert not missing, f"rows of the test vocabulary (app.cli.demo.CASES) not covered: {missing}"
    plan = order_plan(vocabulary)
    assert len(plan) == total

    started = time.monotonic()
    placed = place_all(system, plan, customer=f"bench-{broker.kind}")
    placing = time.monotonic() - started
    wait_all_terminal(system, [p.order_id for p in placed], workers, TERMINAL_TIMEOUT)
    wall = time.monotonic() - started
    rate = total / wall
    latency = mean_saga_seconds(system, [p.order_id for p in placed])
    print(
        f"\n[{label}, {system.runtime.settings.saga_mode}, 4 worker processes x {WORKER_CONCURRENCY} pool "
        f"processes] {total} sagas in {wall:.2f}s (placing took {placing:.2f}s): {rate:.1f} sagas/s, "
        f"mean saga latency {latency:.2f}s (placed -> terminal)"
    )
    record_property("saga_mode", system.runtime.settings.saga_mode)
    record_property("mean_saga_seconds", round(latency, 3))
    record_property("broker", broker.kind)
    record_property("sagas", total)
    record_property("saga_wall_seconds", round(wall, 3))
    record_property("sagas_per_second", round(rate, 2))

    assert_outcomes(system, placed, workers)
    report = assert_audit_clean(system, placed, workers)
    assert_tok_down_dead_letters(broker, system, placed, workers, report)
    assert_namespaced(broker, placed, system.runtime.settings.saga_mode)
    assert not workers.exited(), f"worker(s) died during the run: {workers.exited()}\n{workers.tails()}"
    return placed


def mean_saga_seconds(system: System, order_ids: list[str]) -> float:
    """Mean time from placement to a terminal status over ``order_ids``."""
    rows = system.runtime.databases["order"].query(
        lambda c: c.execute(
            select(orders.c.created_at, orders.c.finished_at).where(orders.c.order_id.in_(order_ids))
        ).all()
    )
    spans = [(r.finished_at - r.created_at).total_seconds() for r in rows if r.finished_at is not None]
    return sum(spans) / len(spans) if spans else 0.0


def assert_outcomes(system: System, placed: list[Placed], workers: Workers) -> None:
    """Every order ended as its input predicts, and the transient rows really went through
    retries (the gateway's own books)."""
    wrong = []
    for p in placed:
        view = system.runtime.order.view(p.order_id)
        if (view.status, view.reason) != (p.row.status, p.row.reason):
            wrong.append(
                f"{p.order_id} ({p.row.label}): {view.status} {view.reason}, "
                f"expected {p.row.status} {p.row.reason}; steps {view.steps}"
            )
        elif view.total_cents != p.total_cents:
            wrong.append(f"{p.order_id} ({p.row.label}): total {view.total_cents}, expected {p.total_cents}")
        elif view.finished_at is None:
            wrong.append(f"{p.order_id} ({p.row.label}): {view.status} but no finished_at")
    assert not wrong, f"{len(wrong)} order(s) ended wrongly:\n" + "\n".join(wrong[:20]) + f"\n{workers.tails()}"

    attempts = authorize_attempts(system)
    retry_max = system.runtime.settings.retry_max
    for p in placed:
        if p.row.label == "tok_flaky":
            assert attempts.get(p.order_id) == FLAKY_FAILURES + 1, (
                f"tok_flaky order {p.order_id}: {attempts.get(p.order_id)} authorize attempts, "
                f"expected {FLAKY_FAILURES + 1}"
            )
        elif p.row.label == "tok_down":
            assert attempts.get(p.order_id) == retry_max + 1, (
                f"tok_down order {p.order_id}: {attempts.get(p.order_id)} authorize attempts, "
                f"expected {retry_max + 1} (first try + {retry_max} retries)"
            )


def assert_audit_clean(system: System, placed: list[Placed], workers: Workers) -> Report:
    """The invariants hold over every service's tables, and they hold only these orders."""
    report = audit(system.runtime, settle=AUDIT_SETTLE)
    assert report.clean, f"auditor: {report.summary()}\n" + "\n".join(report.violations[:50]) + f"\n{workers.tails()}"
    expected_statuses: Counter[str] = Counter(p.row.status for p in placed)
    assert report.orders == len(placed), f"the database holds {report.orders} orders, not this run's {len(placed)}"
    assert report.statuses == expected_statuses, f"statuses {dict(report.statuses)} != {dict(expected_statuses)}"
    return report


def expected_dlq_depths(counts: Counter[str]) -> dict[str, int]:
    """``{"<service>.dlq": n}`` for every service, from per-service counts (missing = 0)."""
    return {dead_letter_queue_name(service): counts[service] for service in SERVICES}


def wait_dlq_depths(broker: BrokerNamespace, system: System, counts: Counter[str], workers: Workers) -> dict[str, int]:
    """RabbitMQ: until each ``<service>.dlq`` holds ``counts[service]`` messages (a rejected
    message reaches it through the broker's dead-letter exchange, a moment after the
    reject). Other brokers have no such queues."""
    ops = DeadLetterOps(system.runtime)
    if broker.kind != "rabbitmq":
        assert ops.broker_depths() == {}, "only RabbitMQ has dead-letter queues"
        return {}
    expected = expected_dlq_depths(counts)
    last: dict[str, dict[str, int]] = {}

    def reached() -> bool:
        last["depths"] = ops.broker_depths()
        return last["depths"] == expected

    wait_until(
        reached,
        timeout=30,
        interval=0.2,
        what=f"dead-letter queue depths {expected}",
        diagnostics=lambda: f"depths now {last.get('depths')}\n{workers.tails()}",
    )
    return last["depths"]


def letters_by_order(letters: list[DeadLetter]) -> dict[str | None, list[DeadLetter]]:
    grouped: dict[str | None, list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        grouped[letter.order_id].append(letter)
    return grouped


def assert_tok_down_dead_letters(
    broker: BrokerNamespace, system: System, placed: list[Placed], workers: Workers, report: Report
) -> None:
    """Each tok_down order left exactly one dead letter — its exhausted payment.authorize,
    tried retry_max + 1 times — and no other order (nor any message without one) left any."""
    rt = system.runtime
    retry_max = rt.settings.retry_max
    down = {p.order_id for p in placed if p.row.label == "tok_down"}

    def enough() -> tuple[list[DeadLetter]] | None:
        found = rt.dead_letters.find(status=DEAD)
        return (found,) if len(found) >= len(down) else None

    # The step gives up (the saga compensates) just before the message is dead-lettered.
    (letters,) = wait_until(
        enough,
        timeout=30,
        what=f"{len(down)} dead letter(s), one per tok_down order",
        diagnostics=lambda: f"dead letters: {[(d.task, d.order_id) for d in rt.dead_letters.find()]}",
    )
    grouped = letters_by_order(letters)
    strays = {oid: [(d.task, d.reason) for d in ds] for oid, ds in grouped.items() if oid not in down}
    assert not strays, f"dead letters of orders that are not tok_down: {strays}\n{workers.tails()}"
    for order_id in sorted(down):
        mine = grouped.get(order_id, [])
        assert len(mine) == 1, f"tok_down order {order_id}: {len(mine)} dead letters, expected 1: {mine}"
        (letter,) = mine
        authorize = "payment.authorize_on_placed" if rt.settings.saga_mode == "choreography" else "payment.authorize"
        assert (letter.queue, letter.task, letter.status) == ("payment", authorize, DEAD), letter
        assert "payment_unavailable" in letter.reason, f"{order_id}: dead letter reason {letter.reason!r}"
        assert letter.attempts == retry_max + 1, (
            f"{order_id}: dead letter counts {letter.attempts} attempts, expected {retry_max + 1}"
        )
        if rt.settings.saga_mode == "choreography":  # the OrderPlaced delivery to the payment service
            assert letter.message_key.endswith(":payment.authorize_on_placed"), letter.message_key
        else:  # the canvas's step, named after the order
            assert letter.message_key == f"{order_id}.authorize_payment", letter.message_key
    assert report.dead_letters == len(down), f"auditor counted {report.dead_letters} dead letters, not {len(down)}"
    wait_dlq_depths(broker, system, Counter({"payment": len(down)}), workers)


@pytest.mark.brokers
@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_200_mixed_orders_across_worker_processes(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    record_property: Any,
) -> None:
    assert system.runtime.settings.database_url_for("order").startswith("postgresql+psycopg://")
    run_mixed_orders(broker, system, workers, VOCABULARY, TOTAL_ORDERS, f"{broker.kind}+postgresql", record_property)


@pytest.mark.brokers
@pytest.mark.timeout(420)
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_60_mixed_orders_on_one_sqlite_file_across_worker_processes(
    broker: BrokerNamespace,
    database: str,
    system: System,
    workers: Workers,
    record_property: Any,
) -> None:
    """PostgreSQL and SQLite must both work with one worker process per service: here all
    five processes write one SQLite file (WAL + BEGIN IMMEDIATE + busy_timeout)."""
    path = Path(database.removeprefix("sqlite:///"))
    assert database.startswith("sqlite:///") and path.is_absolute(), database
    for service in SERVICES:
        assert system.runtime.settings.database_url_for(service) == database
    assert workers.exited() == {}

    run_mixed_orders(
        broker, system, workers, SQLITE_VOCABULARY, SQLITE_TOTAL_ORDERS, f"{broker.kind}+sqlite", record_property
    )

    # What the auditor read through this process is what the workers wrote to the file.
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        orders = conn.execute("SELECT status, count(*) FROM order_orders GROUP BY status").fetchall()
        committed = conn.execute("SELECT count(*) FROM inventory_events WHERE event_type = 'InventoryCommitted'")
        inventory_committed = committed.fetchone()[0]
    assert journal_mode == "wal", f"{path} is in journal mode {journal_mode!r}, not WAL"
    completed = sum(row.count for row in SQLITE_VOCABULARY if row.status == "COMPLETED")
    assert dict(orders) == {"COMPLETED": completed, "CANCELLED": SQLITE_TOTAL_ORDERS - completed}, orders
    assert inventory_committed == completed, f"{inventory_committed} InventoryCommitted events, expected {completed}"
