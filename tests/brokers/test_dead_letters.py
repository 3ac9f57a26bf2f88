"""Dead letters on real brokers, with each service a separate ``celery worker`` process.

* Poison: 50 malformed messages published between 100 orders, spread over the four service
  queues — a body that is not JSON, a JSON body that is not a task message, a task no
  worker knows, and a known step task whose body fails its schema. Each becomes exactly
  one dead letter at once (never retried), the orders all finish as their inputs predict,
  the auditor is clean and no worker exits. On RabbitMQ each poison message also sits in
  its queue's ``<queue>.dlq``, put there by the broker's dead-letter exchange.
* Redrive and purge (RabbitMQ): a tok_down order's exhausted authorization is redriven
  from the store — the letter is REDRIVEN, its copy leaves ``payment.dlq``, and since the
  order is already cancelled nothing else happens; ``purge()`` drops a fresh dead letter
  together with the broker's copy.

The order mix leaves ``tok_down`` out of the poison run, so the dead letters there are
exactly the poison messages.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from app.adapters.fake_gateway import ledger
from app.api import System, validate_order
from app.domain.subscriptions import MODES
from app.operations.audit import audit
from app.operations.dlq import DeadLetterOps
from app.persistence.deadletters import DEAD, PURGED, REDRIVEN, DeadLetter
from config.settings import SERVICES
from tests.brokers.test_multiprocess import (
    VOCABULARY,
    Row,
    assert_audit_clean,
    assert_outcomes,
    order_plan,
    place_all,
    wait_all_terminal,
    wait_dlq_depths,
)
from tests.conftest import publish_raw, wait_until
from tests.support.cluster import BrokerNamespace, Workers, rabbitmq_queues

#: The poison run's orders: every row of the vocabulary but tok_down (~5 s of retries and a
#: dead letter of its own each), 100 in all.
POISON_RUN_VOCABULARY: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, count, row.kwargs)
    for row, count in zip(VOCABULARY, (79, 6, 7, 0, 4, 4), strict=True)
    if count
)
POISON_RUN_ORDERS = 100
POISON_MESSAGES = 50
ORDERS_PER_POISON = POISON_RUN_ORDERS // POISON_MESSAGES  # 2

#: Bound on each wait of the poison run; the whole run takes ~15-20 s per broker.
POISON_RUN_TIMEOUT = 60.0

#: Per service queue: a step task it runs, and a body failing that task's command schema
#: (the model's name and the field the reason must name).
SCHEMA_POISON: dict[str, tuple[str, str, str, Callable[[str], dict[str, Any]]]] = {
    "order": ("order.complete", "CompleteOrder", "coupon", lambda oid: {"order_id": oid, "coupon": "FREE"}),
    "inventory": ("inventory.reserve", "ReserveInventory", "lines", lambda oid: {"order_id": oid, "lines": []}),
    "payment": (
        "payment.authorize",
        "AuthorizePayment",
        "amount_cents",
        lambda oid: {"order_id": oid, "amount_cents": "lots", "currency": "EUR", "payment_token": "tok_ok"},
    ),
    "shipping": (
        "shipping.schedule",
        "ScheduleShipment",
        "ship_to",
        lambda oid: {"order_id": oid, "ship_to": "the moon", "lines": [{"sku": "MUG-01", "qty": 1}]},
    ),
}

POISON_KINDS = ("not json", "not a task message", "unknown task", "invalid body", "hostile header")

#: Headers of the wrong type or shape (a ``timelimit`` of two strings once took the pool
#: down with the message unacknowledged, on every redelivery), and the reason each is given.
HOSTILE_HEADERS: tuple[tuple[str, Any, str], ...] = (
    ("timelimit", ["soft", "hard"], "its timelimit header holds something other than a number"),
    ("eta", "tomorrow", "its eta header is not an ISO 8601 time"),
    ("retries", "three", "its retries header is not a whole number"),
    ("argsrepr", 42, "its argsrepr header is not a string"),
    ("root_id", [1, 2], "its root_id header is not a string"),
)


@dataclass(frozen=True)
class Poison:
    """One malformed message sent, and the dead letter it must become."""

    n: int
    kind: str
    queue: str
    message_key: str  # the task id, or sha256 of the body for a message without one
    task: str | None
    order_id: str | None
    reason_prefix: str


def body_key(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def publish_poison(system: System, n: int) -> Poison:
    """The n-th poison message: kinds cycle every message, queues every four, so every
    (kind, queue) pair occurs."""
    kind = POISON_KINDS[n % len(POISON_KINDS)]
    queue = SERVICES[(n // len(POISON_KINDS)) % len(SERVICES)]
    routing_key = f"{queue}.task"
    if kind == "not json":
        body = f'{{"poison": {n}, not json'.encode()
        publish_raw(system, body, {}, routing_key)
        return Poison(n, kind, queue, body_key(body), None, None, "undecodable message: ")
    if kind == "not a task message":
        body = json.dumps({"hello": "world", "poison": n}).encode()
        publish_raw(system, body, {}, routing_key)
        return Poison(n, kind, queue, body_key(body), None, None, "not a task message")
    task_id = str(uuid.uuid4())
    if kind == "unknown task":
        name = f"{queue}.teleport"
        headers = {"task": name, "id": task_id, "lang": "py", "root_id": task_id, "retries": 0}
        publish_raw(system, json.dumps([[{"poison": n}], {}, {}]).encode(), headers, routing_key)
        return Poison(n, kind, queue, task_id, name, None, f"unknown task {name!r}")
    name, model, field, make_body = SCHEMA_POISON[queue]
    if kind == "hostile header":
        header, value, reason = HOSTILE_HEADERS[(n // len(POISON_KINDS)) % len(HOSTILE_HEADERS)]
        headers = {"task": name, "id": task_id, "lang": "py", "root_id": task_id, "retries": 0, header: value}
        publish_raw(system, json.dumps([[{"order_id": f"poison-{n}"}], {}, {}]).encode(), headers, routing_key)
        return Poison(n, kind, queue, task_id, name, None, f"invalid task message: {reason}")
    order_id = f"poison-{n}"
    system.runtime.celery.send_task(name, args=(make_body(order_id),), task_id=task_id)
    return Poison(n, kind, queue, task_id, name, order_id, f"invalid {model}: {field}: ")


def check_poison_letters(letters: list[DeadLetter], poisons: list[Poison]) -> list[str]:
    """What is wrong with the dead letters, poison by poison (empty when all is right)."""
    wrong: list[str] = []
    by_key: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_key.setdefault(letter.message_key, []).append(letter)
    expected = {p.message_key: p for p in poisons}
    for key in sorted(set(by_key) - set(expected)):
        wrong.append(f"unexpected dead letter(s) {[(d.queue, d.task, d.reason) for d in by_key[key]]}")
    for p in poisons:
        found = by_key.get(p.message_key, [])
        if len(found) != 1:
            wrong.append(f"poison {p.n} ({p.kind} on {p.queue}): {len(found)} dead letters, expected 1")
            continue
        (d,) = found
        got = (d.queue, d.task, d.order_id, d.attempts, d.status)
        if got != (p.queue, p.task, p.order_id, 1, DEAD):
            wrong.append(f"poison {p.n} ({p.kind}): (queue, task, order, attempts, status) {got}")
        if not d.reason.startswith(p.reason_prefix):
            wrong.append(f"poison {p.n} ({p.kind}): reason {d.reason!r} does not start with {p.reason_prefix!r}")
    return wrong


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_poison_messages_between_orders_are_dead_lettered_once_and_the_workers_go_on(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    record_property: Any,
) -> None:
    rt = system.runtime
    ops = DeadLetterOps(rt)
    assert ops.letters(include_done=True) == []
    plan = order_plan(POISON_RUN_VOCABULARY)
    assert len(plan) == POISON_RUN_ORDERS

    poisons: list[Poison] = []

    def poison_after(n: int) -> None:
        if n % ORDERS_PER_POISON == ORDERS_PER_POISON - 1:
            poisons.append(publish_poison(system, len(poisons)))

    started = time.monotonic()
    placed = place_all(system, plan, customer=f"poison-{broker.kind}", after_each=poison_after)
    assert len(poisons) == POISON_MESSAGES
    assert {(p.kind, p.queue) for p in poisons} == {(k, q) for k in POISON_KINDS for q in SERVICES}
    wait_all_terminal(system, [p.order_id for p in placed], workers, POISON_RUN_TIMEOUT)

    # Every poison message became exactly one dead letter, at once.
    letters = wait_until(
        lambda: len(found := ops.letters()) >= POISON_MESSAGES and found,
        timeout=POISON_RUN_TIMEOUT,
        interval=0.1,
        what=f"{POISON_MESSAGES} dead letters",
        diagnostics=lambda: f"{len(ops.letters())} dead letters so far\n{workers.tails()}",
    )
    wrong = check_poison_letters(letters, poisons)
    assert not wrong, f"{len(wrong)} problem(s) with the dead letters:\n" + "\n".join(wrong[:20])
    assert len(letters) == POISON_MESSAGES
    wall = time.monotonic() - started
    print(f"\n[{broker.kind}] {POISON_RUN_ORDERS} orders and {POISON_MESSAGES} poison messages in {wall:.2f}s")
    record_property("poison_run_seconds", round(wall, 3))

    # The orders went through untouched.
    assert_outcomes(system, placed, workers)
    report = assert_audit_clean(system, placed, workers)
    assert report.dead_letters == POISON_MESSAGES, report.summary()

    # On RabbitMQ the broker kept its own copy of each, in the queue's .dlq.
    depths = wait_dlq_depths(broker, system, Counter(p.queue for p in poisons), workers)
    if broker.kind == "rabbitmq":
        assert sum(depths.values()) == POISON_MESSAGES, depths

    # No poison message was retried or redelivered, and every worker is alive and answering.
    assert [d for d in ops.letters() if d.attempts != 1] == []
    assert workers.exited() == {}, f"worker(s) exited: {workers.exited()}\n{workers.tails()}"
    workers.wait_ready(rt.celery, timeout=15)


# --- redrive and purge (RabbitMQ) ------------------------------------------------------

REDRIVE_TIMEOUT = 60.0


def place_tok_down(system: System, customer: str) -> str:
    order_id, created = system.runtime.order.place(
        validate_order(customer, items=[{"sku": "MUG-01", "qty": 1}], payment_token="tok_down")
    )
    assert created
    return order_id


def ledger_rows(system: System, order_id: str) -> dict[str, dict[str, Any]]:
    """The fake gateway's books for one order: operation -> row (without its timestamp)."""
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(select(ledger).where(ledger.c.reference == order_id)).all()
    )
    return {r.operation: {k: v for k, v in r._mapping.items() if k != "updated_at"} for r in rows}


def result_done_at(system: System, task_id: str) -> datetime | None:
    """When the result backend last stored task ``task_id``'s result."""
    done: datetime | None = system.runtime.celery.backend.get_task_meta(task_id).get("date_done")
    return done


def service_queues_idle(broker: BrokerNamespace) -> bool:
    """RabbitMQ: no message waiting in any service queue."""
    assert broker.vhost is not None
    queues = rabbitmq_queues(broker.vhost)
    return all(queues.get(service, 0) == 0 for service in SERVICES)


def dead_letter_of(system: System, order_id: str, workers: Workers) -> DeadLetter:
    """The one dead letter a tok_down order leaves: its exhausted payment.authorize."""
    view = system.runtime.order.view(order_id)
    assert (view.status, view.reason) == ("CANCELLED", "payment_unavailable"), view
    letters = wait_until(
        lambda: DeadLetterOps(system.runtime).letters(order_id=order_id),
        timeout=30,
        what=f"the dead letter of order {order_id}",
        diagnostics=workers.tails,
    )
    assert len(letters) == 1, letters
    (letter,) = letters
    assert (letter.queue, letter.task, letter.status) == ("payment", "payment.authorize", DEAD), letter
    assert letter.attempts == system.runtime.settings.retry_max + 1, letter
    return letter


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_redrive_and_purge_take_the_message_out_of_the_rabbitmq_dlq(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
) -> None:
    rt = system.runtime
    ops = DeadLetterOps(rt)
    no_dead_letters = Counter[str]()

    # A tok_down order: retries exhausted, dead-lettered through the DLX, order compensated.
    order_id = place_tok_down(system, "redrive")
    wait_all_terminal(system, [order_id], workers, REDRIVE_TIMEOUT)
    letter = dead_letter_of(system, order_id, workers)
    wait_dlq_depths(broker, system, Counter({"payment": 1}), workers)
    before = audit(rt, settle=10)
    assert before.clean and before.dead_letters == 1, before.violations
    books = ledger_rows(system, order_id)
    assert books["authorize"]["outcome"] == "pending", books
    view = rt.order.view(order_id)
    done_at = result_done_at(system, letter.message_key)
    assert done_at is not None, "the exhausted step left no result"

    # Redrive: the letter is REDRIVEN and its copy leaves payment.dlq at once.
    redriven = ops.redrive(letter.id)
    assert redriven.removed_from_broker, "redrive did not find the message in payment.dlq"
    assert [(d.id, d.status) for d in ops.letters(include_done=True)] == [(letter.id, REDRIVEN)]
    assert ops.broker_depths() == {f"{s}.dlq": 0 for s in SERVICES}

    # The redriven task runs (its result is stored again) and the system goes quiet.
    wait_until(
        lambda: (now := result_done_at(system, letter.message_key)) is not None and now > done_at,
        timeout=REDRIVE_TIMEOUT,
        interval=0.1,
        what="the redriven payment.authorize to run",
        diagnostics=workers.tails,
    )
    wait_until(lambda: service_queues_idle(broker), timeout=30, interval=0.2, what="the service queues to drain")

    # No second effect: the order, its story and the bank's books are as they were (but for
    # the gateway's attempt counter, should the step have called it again), no new dead
    # letter, nothing back in payment.dlq, and the auditor is still clean.
    after = audit(rt, settle=10)
    assert after.clean, after.violations
    assert (after.events, after.dead_letters) == (before.events, 0), (after.summary(), before.summary())
    again = rt.order.view(order_id)
    assert (again.status, again.reason, again.events, again.finished_at) == (
        view.status,
        view.reason,
        view.events,
        view.finished_at,
    )
    now_books = ledger_rows(system, order_id)
    assert now_books.keys() == books.keys(), (books, now_books)
    for operation, row in books.items():
        ignore = {"attempts"} if operation == "authorize" else set()
        assert {k: v for k, v in now_books[operation].items() if k not in ignore} == {
            k: v for k, v in row.items() if k not in ignore
        }, f"gateway ledger {operation} changed: {row} -> {now_books[operation]}"
    redrive_attempts = now_books["authorize"]["attempts"] - books["authorize"]["attempts"]
    print(f"\nredrive: {redrive_attempts} new gateway authorize attempt(s) for {order_id}")
    assert ops.letters() == []
    wait_dlq_depths(broker, system, no_dead_letters, workers)

    # Purge: a fresh dead letter is dropped, with the broker's copy.
    other = place_tok_down(system, "purge")
    wait_all_terminal(system, [other], workers, REDRIVE_TIMEOUT)
    fresh = dead_letter_of(system, other, workers)
    wait_dlq_depths(broker, system, Counter({"payment": 1}), workers)
    assert ops.purge() == 1
    assert ops.broker_depths() == {f"{s}.dlq": 0 for s in SERVICES}
    statuses = {d.id: d.status for d in ops.letters(include_done=True)}
    assert statuses == {letter.id: REDRIVEN, fresh.id: PURGED}, statuses
    final = audit(rt, settle=10)
    assert final.clean and final.dead_letters == 0, final.violations
    assert workers.exited() == {}, f"worker(s) exited: {workers.exited()}\n{workers.tails()}"
