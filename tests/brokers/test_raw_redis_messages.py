"""Payloads that are not kombu messages, pushed straight onto the Redis lists of the service
queues (``LPUSH``), with each service a separate ``celery worker`` process (two pool
processes each).

kombu's Redis transport carries each message as a JSON envelope and reads it as given,
before any check of the worker's consumer: text that is not JSON (or not UTF-8, or nested too deep to read), JSON that
is not an object, an envelope without properties or whose properties, delivery_info or
headers are not objects, without a delivery tag, or whose body is not in its declared
encoding. Each kind goes to every service queue, under the system's key prefix.

Each must become exactly one dead letter in the application's store, reason
``invalid message: not a kombu message envelope: ...``, keeping the payload's raw bytes; no
worker exits, no pool process is replaced, nothing is left unacknowledged, and orders
placed afterwards complete.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from app.api import System, validate_order
from app.operations.dlq import DeadLetterOps
from app.persistence.deadletters import DEAD
from config.settings import SERVICES
from tests.brokers.test_dead_letters import body_key
from tests.brokers.test_hostile_properties import pool_processes
from tests.brokers.test_multiprocess import wait_all_terminal
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, redis_client

#: Bound on each wait; the whole test takes ~20 s.
TIMEOUT = 60.0
#: Orders placed after the payloads, which must all complete.
ORDERS_AFTER = 8

REASON = "invalid message: not a kombu message envelope: "


def _envelope(n: int, **changes: Any) -> dict[str, Any]:
    """A kombu envelope as the transport writes one, with ``changes`` (None: field removed)."""
    envelope: dict[str, Any] = {
        "body": base64.b64encode(json.dumps([[{"n": n}], {}, {}]).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "order.teleport", "id": f"raw-{n}"},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": f"tag-{n}",
            "delivery_info": {"exchange": "checkout", "routing_key": "order.task"},
            "priority": 0,
        },
    }
    for key, value in changes.items():
        target, field = (envelope["properties"], key[len("properties.") :]) if "." in key else (envelope, key)
        if value is None:
            target.pop(field)
        else:
            target[field] = value
    return envelope


#: (label, payload of the n-th message, what its reason names after REASON)
PAYLOADS: tuple[tuple[str, Any, str], ...] = (
    ("not JSON", lambda n: f'{{"body": "x", not json {n}'.encode(), "not JSON"),
    ("not UTF-8", lambda n: b"\xff\xfe" + str(n).encode(), "not JSON"),
    ("nested too deep to read", lambda n: b"[" * 5000 + str(n).encode(), "not JSON"),
    ("JSON, not an object", lambda n: json.dumps(["body", n]).encode(), "it is not a JSON object"),
    ("no properties", lambda n: _envelope(n, properties=None), "its properties are missing or not an object"),
    ("properties a string", lambda n: _envelope(n, properties="x"), "its properties are missing or not an object"),
    ("headers a list", lambda n: _envelope(n, headers=["task"]), "its headers are not an object"),
    (
        "delivery_info a string",
        lambda n: _envelope(n, **{"properties.delivery_info": "order"}),
        "its delivery_info is missing or not an object",
    ),
    (
        "no delivery tag",
        lambda n: _envelope(n, **{"properties.delivery_tag": None}),
        "its delivery_tag is missing or not a string",
    ),
    ("body not base64", lambda n: _envelope(n, body="A"), "its body is not base64 data"),
)


def raw_bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


@pytest.mark.brokers
@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_payloads_that_are_not_kombu_messages_are_dead_lettered_once_and_every_worker_goes_on(
    broker: BrokerNamespace, system: System, workers: Workers, record_property: Any
) -> None:
    rt = system.runtime
    ops = DeadLetterOps(rt)
    processes = pool_processes(workers)
    assert all(len(pids) == 3 for pids in processes.values()), processes  # main process and two pool children

    sent: dict[str, tuple[str, str, bytes]] = {}  # message key -> (queue, reason, raw bytes)
    client = redis_client()
    started = time.monotonic()
    try:
        for n, (queue, (_label, make, problem)) in enumerate((q, p) for p in PAYLOADS for q in SERVICES):
            raw = raw_bytes(make(n))
            sent[body_key(raw)] = (queue, REASON + problem, raw)
            client.lpush(f"{broker.namespace}:{queue}", raw)  # the system's global_keyprefix
        letters = wait_until(
            lambda: len(found := ops.letters()) >= len(sent) and found,
            timeout=TIMEOUT,
            interval=0.1,
            what=f"{len(sent)} dead letters",
            diagnostics=lambda: f"{len(ops.letters())} dead letters so far\n{workers.tails()}",
        )
        dead_lettered = time.monotonic() - started
        got = {d.message_key: d for d in letters}
        assert len(letters) == len(got) == len(sent), [(d.queue, d.reason) for d in letters]
        assert set(got) == set(sent)
        for key, (queue, reason, raw) in sent.items():
            letter = got[key]
            assert (letter.queue, letter.task, letter.order_id, letter.attempts, letter.status) == (
                queue,
                None,
                None,
                1,
                DEAD,
            )
            assert letter.reason.startswith(reason), (letter.reason, reason)
            assert base64.b64decode(letter.message["body"]) == raw  # the payload itself is kept
            assert letter.message["headers"] == {} and letter.message["routing_key"] is None

        # Every process on each queue goes on: orders placed now complete.
        ids = [
            rt.order.place(validate_order(f"after-raw-{n}", [{"sku": "MUG-01", "qty": 1}]))[0]
            for n in range(ORDERS_AFTER)
        ]
        wait_all_terminal(system, ids, workers, TIMEOUT)
        assert {rt.order.status(order_id) for order_id in ids} == {"COMPLETED"}
        assert len(ops.letters()) == len(sent), "a dead letter came after the orders"
        # nothing is held unacknowledged, nothing left on a queue
        wait_until(
            lambda: client.hlen(f"{broker.namespace}:unacked") == 0,
            timeout=TIMEOUT,
            interval=0.1,
            what="no message left unacknowledged",
        )
        assert {q: client.llen(f"{broker.namespace}:{q}") for q in SERVICES} == dict.fromkeys(SERVICES, 0)
    finally:
        client.close()

    assert workers.exited() == {}, f"worker(s) exited: {workers.exited()}\n{workers.tails()}"
    workers.wait_ready(rt.celery, timeout=15)
    assert pool_processes(workers) == processes, "a worker process was replaced"
    print(
        f"\n[redis] {len(sent)} raw payloads ({len(PAYLOADS)} kinds x {len(SERVICES)} queues): "
        f"{len(sent)} dead letters in {dead_lettered:.2f}s; {ORDERS_AFTER} orders after them completed"
    )
    record_property("raw_payloads", len(sent))
    record_property("dead_lettered_seconds", round(dead_lettered, 3))
