"""Task messages with malformed kombu/AMQP properties, on real brokers, with each service a
separate ``celery worker`` process (two pool processes each).

A kombu ``Producer`` publishes each straight to a service queue, with the properties a
foreign or broken producer could give it: a content type no worker accepts, a body
encoding that is not UTF-8, a body that does not match its content type, a ``compression``
header naming no compression or a body that is not compressed, no application headers at
all. On Redis, where kombu carries the properties as JSON, also a ``correlation_id`` that
is not a string, a ``reply_to`` that is an object and a ``priority`` that is not a number
(RabbitMQ's wire types those: a producer cannot send them there). Every kind goes to every
service queue.

Each must become exactly one dead letter in the application's store, with its reason, at
once (never run, never retried); on RabbitMQ the broker's dead-letter exchange also keeps
a copy in ``<queue>.dlq``. No worker exits, no pool process is replaced (the same pids
before and after), every worker answers a ping, and orders placed after the last of them
complete.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from kombu import Producer

from app.api import System, validate_order
from app.messaging.publisher import EXCHANGE
from app.operations.dlq import DeadLetterOps
from config.settings import SERVICES
from tests.brokers.test_dead_letters import SCHEMA_POISON, Poison, body_key, check_poison_letters
from tests.brokers.test_multiprocess import wait_all_terminal, wait_dlq_depths
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, live_group_members

#: Bound on each wait; the whole test takes ~20-30 s per broker.
TIMEOUT = 60.0
#: Orders placed after the malformed messages, which must all complete.
ORDERS_AFTER = 8


@dataclass(frozen=True)
class Kind:
    """One kind of malformed message: how it is published, and the reason it must get."""

    label: str
    reason_prefix: str
    publish: dict[str, Any]  # Producer.publish keyword arguments over the genuine ones
    body: bytes | None = None  # instead of the task's JSON body
    headers: dict[str, Any] | None = None  # added to the task headers
    no_headers: bool = False  # no application headers at all
    brokers: tuple[str, ...] = ("redis", "rabbitmq")


KINDS: tuple[Kind, ...] = (
    Kind(
        "unknown content type", "invalid task message: Refusing to deserialize", {"content_type": "application/x-bogus"}
    ),
    Kind(
        "content encoding not utf-8",
        "invalid message: its content_encoding 'utf-99' is not utf-8",
        {"content_encoding": "utf-99"},
    ),
    Kind("body not its content type", "undecodable message: ", {}, body=b"\x00\x9f<not json>"),
    Kind(
        "unknown compression",
        "undecodable message: its compression header 'application/x-bogus' names no compression kombu knows",
        {},
        headers={"compression": "application/x-bogus"},
    ),
    Kind(
        "body not compressed",
        "undecodable message: its body is not application/x-gzip data",
        {},
        headers={"compression": "application/x-gzip"},
    ),
    Kind("no application headers", "not a task message", {}, no_headers=True),
    Kind(
        "correlation_id not a string",
        "invalid message: its correlation_id property is not a string",
        {"correlation_id": 42},
        brokers=("redis",),
    ),
    Kind(
        "reply_to an object",
        "invalid message: its reply_to property is not a string",
        {"reply_to": {"queue": "elsewhere"}},
        brokers=("redis",),
    ),
    Kind(
        "priority not a number",
        "invalid message: its priority property is not a number from 0 to 255",
        {"priority": "high"},
        brokers=("redis",),
    ),
)


def publish_malformed(system: System, kind: Kind, queue: str, n: int) -> Poison:
    """Publish one message of ``kind`` to ``queue``: a step task of that queue, with a body
    that would fail its schema if it ever ran (so a message let through shows as the wrong
    dead letter, not as an effect)."""
    name, _model, _field, make_body = SCHEMA_POISON[queue]
    task_id = str(uuid.uuid4())
    body = kind.body or json.dumps([[make_body(f"malformed-{n}")], {}, {"n": n}]).encode()
    headers = None
    if not kind.no_headers:
        headers = {"task": name, "id": task_id, "lang": "py", "root_id": task_id, "retries": 0, **(kind.headers or {})}
    options: dict[str, Any] = {"content_type": "application/json", "content_encoding": "utf-8", **kind.publish}
    with system.runtime.celery.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=EXCHANGE,
            routing_key=f"{queue}.task",
            headers=headers,
            declare=[EXCHANGE],
            retry=True,
            **options,
        )
    key = body_key(body) if kind.no_headers else task_id
    task = None if kind.no_headers else name
    return Poison(n, kind.label, queue, key, task, None, kind.reason_prefix)


def pool_processes(workers: Workers) -> dict[str, list[int]]:
    """Per worker, the pids of its process group (main process and pool children)."""
    return {name: sorted(live_group_members(proc.pid)) for name, proc in workers.procs.items()}


@pytest.mark.brokers
@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_messages_with_malformed_properties_are_dead_lettered_once_and_every_worker_goes_on(
    broker: BrokerNamespace, system: System, workers: Workers, record_property: Any
) -> None:
    rt = system.runtime
    ops = DeadLetterOps(rt)
    processes = pool_processes(workers)
    assert all(len(pids) == 3 for pids in processes.values()), processes  # main process and two pool children

    started = time.monotonic()
    kinds = [kind for kind in KINDS if broker.kind in kind.brokers]
    poisons = [
        publish_malformed(system, kind, queue, n)
        for n, (kind, queue) in enumerate((kind, queue) for kind in kinds for queue in SERVICES)
    ]
    letters = wait_until(
        lambda: len(found := ops.letters()) >= len(poisons) and found,
        timeout=TIMEOUT,
        interval=0.1,
        what=f"{len(poisons)} dead letters",
        diagnostics=lambda: f"{len(ops.letters())} dead letters so far\n{workers.tails()}",
    )
    wrong = check_poison_letters(letters, poisons)
    assert not wrong, f"{len(wrong)} problem(s) with the dead letters:\n" + "\n".join(wrong[:20])
    assert len(letters) == len(poisons)
    dead_lettered = time.monotonic() - started

    # Every process on each queue goes on: orders placed now complete.
    ids = [
        rt.order.place(validate_order(f"after-{broker.kind}-{n}", [{"sku": "MUG-01", "qty": 1}]))[0]
        for n in range(ORDERS_AFTER)
    ]
    wait_all_terminal(system, ids, workers, TIMEOUT)
    assert {rt.order.status(order_id) for order_id in ids} == {"COMPLETED"}
    depths = wait_dlq_depths(broker, system, Counter(p.queue for p in poisons), workers)
    if broker.kind == "rabbitmq":
        assert sum(depths.values()) == len(poisons), depths
    assert len(ops.letters()) == len(poisons), "a dead letter came after the orders"

    assert workers.exited() == {}, f"worker(s) exited: {workers.exited()}\n{workers.tails()}"
    workers.wait_ready(rt.celery, timeout=15)
    assert pool_processes(workers) == processes, "a worker process was replaced"
    print(
        f"\n[{broker.kind}] {len(poisons)} messages with malformed properties ({len(kinds)} kinds x "
        f"{len(SERVICES)} queues): {len(letters)} dead letters in {dead_lettered:.2f}s; "
        f"{ORDERS_AFTER} orders after them completed; no process exited or was replaced"
    )
    record_property("malformed_property_messages", len(poisons))
    record_property("dead_lettered_seconds", round(dead_lettered, 3))
