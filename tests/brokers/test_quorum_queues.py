"""Quorum queues on the local RabbitMQ (``CHECKOUT_RABBITMQ_QUEUE_TYPE=quorum``), with the
four services as separate ``celery worker`` processes and PostgreSQL.

* The service queues are quorum queues with the delivery limit, the dead-letter exchange
  and at-least-once dead-lettering; their ``.dlq`` queues are quorum queues too; the workers
  consume with a per-consumer prefetch (no global QoS) and have set up RabbitMQ's delayed
  delivery for retry countdowns. A mixed batch of orders — declines, flaky and dead
  gateways, no stock, no carrier — ends as each input predicts, the auditor is clean, and
  each ``tok_down`` order's exhausted step is in ``payment.dlq``.
* A poison loop ends: a message whose every delivery kills its worker's pool process goes
  back to its queue each time; on a quorum queue the broker dead-letters it to
  ``payment.dlq`` after exactly the delivery limit of returns, while on a classic queue it
  would go round for ever. The orders placed around it complete either way.
* Publisher confirms: when the broker refuses a message (a full queue), the publisher
  knows — the event stays in the outbox instead of being lost, and goes out once the queue
  takes messages again; without confirms the same publish "succeeds" and the message is gone.
* A process configured for classic queues is refused, naming the settings, by a broker
  whose queues are quorum queues.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer

from app.api import System, validate_order
from app.bootstrap import Runtime
from app.operations.dlq import DeadLetterOps
from config.celery import EXCHANGE, dead_letter_queue_name, dead_letter_queues
from config.settings import SERVICES, Settings
from tests.brokers.test_multiprocess import (
    VOCABULARY,
    Row,
    assert_audit_clean,
    assert_outcomes,
    order_plan,
    place_all,
    run_mixed_orders,
    wait_all_terminal,
    wait_dlq_depths,
)
from tests.conftest import wait_until
from tests.support.cluster import WORKER_CONCURRENCY, BrokerNamespace, Workers, rabbitmqctl
from tests.support.crashing_worker import CRASH_LOG, TASK, crash_runs

DELIVERY_LIMIT = 3
QUORUM: dict[str, Any] = {"rabbitmq_queue_type": "quorum", "rabbitmq_delivery_limit": DELIVERY_LIMIT}
CLASSIC: dict[str, Any] = {}

#: The mixed batch: every row of the test vocabulary, 60 orders.
BATCH: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, count, row.kwargs)
    for row, count in zip(VOCABULARY, (36, 6, 6, 3, 5, 4), strict=True)
)
BATCH_ORDERS = 60

#: The orders placed around the poison message: no tok_down, so ``payment.dlq`` holds only
#: what the poison loop put there.
AROUND_POISON: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, count, row.kwargs)
    for row, count in zip(VOCABULARY, (16, 2, 2, 0, 2, 2), strict=True)
    if count
)

TIMEOUT = 120.0

#: The most five retries of a step can wait with the default delays rounded up to whole
#: seconds (1 + 1 + 1 + 2 + 4), plus a margin for the work itself and for a busy machine
#: (five attempts, each queued behind the others' work): a retry the broker held back to a
#: longer delay level (16 s and up) still shows.
MAX_RETRY_WINDOW = 9 + 12.0


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Quorum queues with a delivery limit of 3, unless parametrized (indirect) otherwise."""
    return dict(getattr(request, "param", QUORUM))


def queue_listing(vhost: str) -> dict[str, dict[str, Any]]:
    """Queue name -> {"type": ..., "arguments": {name: value}} in one vhost."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "type", "arguments", "--formatter", "json")
    return {
        q["name"]: {"type": q["type"], "arguments": {name: value for name, _kind, value in q["arguments"]}}
        for q in json.loads(out)
    }


def policies(vhost: str) -> dict[str, str]:
    """Queue name -> the policy applied to it ("" for none)."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "policy", "--formatter", "json")
    return {q["name"]: q["policy"] or "" for q in json.loads(out)}


def consumer_prefetch(vhost: str) -> dict[str, list[int]]:
    """Queue name -> the prefetch count of each of its consumers (0: none of its own)."""
    out = rabbitmqctl("list_consumers", "-p", vhost, "queue_name", "prefetch_count", "--formatter", "json")
    found: dict[str, list[int]] = {}
    for consumer in json.loads(out):
        found.setdefault(consumer["queue_name"], []).append(int(consumer["prefetch_count"]))
    return found


def peek_dead_letter(rt: Runtime, service: str) -> dict[str, Any]:
    """The headers of the first message in ``<service>.dlq`` (left there)."""
    queue = next(q for q in dead_letter_queues(rt.settings.rabbitmq_queue_type) if q.name == f"{service}.dlq")
    with rt.celery.connection_for_write() as conn:
        message = queue(conn.default_channel).get(no_ack=False)
        assert message is not None, f"{queue.name} is empty"
        headers = dict(message.headers or {})
        message.requeue()
    return headers


# --- declared as quorum queues; a mixed batch of orders --------------------------------


@pytest.mark.brokers
@pytest.mark.timeout(420)
@pytest.mark.parametrize("settings_overrides", [{"rabbitmq_queue_type": "quorum"}], indirect=True)
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_quorum_service_queues_carry_a_mixed_batch_of_orders(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    record_property: Any,
) -> None:
    assert broker.vhost is not None
    settings = system.runtime.settings
    assert (settings.rabbitmq_queue_type, settings.rabbitmq_delivery_limit) == ("quorum", 5)

    queues = queue_listing(broker.vhost)
    for service in SERVICES:
        assert queues[service] == {
            "type": "quorum",
            "arguments": {
                "x-queue-type": "quorum",
                "x-delivery-limit": 5,  # the default
                "x-dead-letter-exchange": "checkout.dlx",
                "x-dead-letter-routing-key": dead_letter_queue_name(service),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        }, f"queue {service}: {queues[service]}"
        dlq = dead_letter_queue_name(service)
        assert queues[dlq] == {"type": "quorum", "arguments": {"x-queue-type": "quorum"}}, f"{dlq}: {queues[dlq]}"
    # Celery saw the quorum queues: each worker's consumer has a prefetch of its own
    # (concurrency x multiplier 1) instead of a global one, and RabbitMQ's delayed delivery
    # (which carries retry countdowns) is set up.
    prefetch = consumer_prefetch(broker.vhost)
    assert {s: prefetch.get(s) for s in SERVICES} == {s: [WORKER_CONCURRENCY] for s in SERVICES}, prefetch
    assert queues["celery_delayed_0"]["type"] == "quorum", sorted(queues)
    exchanges = rabbitmqctl("list_exchanges", "-p", broker.vhost, "--no-table-headers", "name").split()
    assert {"celery_delayed_27", "celery_delayed_delivery"} <= set(exchanges), exchanges

    run_mixed_orders(broker, system, workers, BATCH, BATCH_ORDERS, "rabbitmq-quorum+postgresql", record_property)

    # Each retry came back after its countdown (whole seconds through RabbitMQ's delayed
    # delivery), none held back by the broker: a tok_down step's retries, first failure to
    # last, took no longer than their countdowns add up to.
    letters = system.runtime.dead_letters.find()
    assert len(letters) == 3, letters
    for letter in letters:
        took = (letter.last_failed_at - letter.first_failed_at).total_seconds()
        assert took < MAX_RETRY_WINDOW, f"{letter.order_id}: retries took {took:.1f}s"


# --- a poison loop ends in the dead letters ------------------------------------------


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("settings_overrides", [QUORUM, CLASSIC], indirect=True, ids=["quorum", "classic"])
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_message_that_kills_its_worker_on_every_delivery(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    process_env: dict[str, str],
    tmp_path: Path,
) -> None:
    rt = system.runtime
    quorum = rt.settings.rabbitmq_queue_type == "quorum"
    # The payment worker again, now with the poison task among its own.
    crash_log = tmp_path / "crashes.log"
    workers.kill("payment")
    workers.start(
        "payment",
        {**process_env, CRASH_LOG: str(crash_log)},
        tmp_path / "worker-payment.log",
        app="tests.support.crashing_worker",
        append=True,
    )
    workers.wait_ready(rt.celery)

    plan = order_plan(AROUND_POISON)
    half = len(plan) // 2
    placed = place_all(system, plan[:half], customer="before-poison")
    poison = str(uuid.uuid4())
    rt.celery.send_task(TASK, args=({"order_id": "poison"},), task_id=poison)
    placed += place_all(system, plan[half:], customer="after-poison")

    if quorum:
        # First delivery plus DELIVERY_LIMIT returns, then the broker moves it to payment.dlq.
        wait_dlq_depths(broker, system, Counter({"payment": 1}), workers)
        runs = crash_runs(crash_log)
        assert {task_id for task_id, _ in runs} == {poison}, runs
        assert [count for _, count in runs] == list(range(DELIVERY_LIMIT + 1)), runs
        headers = peek_dead_letter(rt, "payment")
        assert headers["id"] == poison and headers["task"] == TASK, headers
        (death,) = headers["x-death"]
        assert (death["reason"], death["queue"]) == ("delivery_limit", "payment"), death
        # No process of ours saw it die, yet it is a dead letter of the application's store
        # (taken in by the sweeper's next round, or by `dlq list`), kept once.
        ops = DeadLetterOps(rt)
        letter = wait_until(
            lambda: ops.take_in() >= 0 and next((d for d in rt.dead_letters.find() if d.message_key == poison), None),
            timeout=TIMEOUT,
            what="the delivery-limit dead letter in the store",
            diagnostics=workers.tails,
        )
        assert (letter.service, letter.queue, letter.task, letter.order_id) == ("payment", "payment", TASK, "poison")
        assert letter.reason.startswith("delivery limit: handed out 4 times"), letter.reason
        assert "x-death" not in letter.message["headers"], letter.message["headers"]
        assert ops.take_in() == 0, "the same broker dead letter was taken in twice"
        assert [d.id for d in rt.dead_letters.find()] == [letter.id]
        assert ops.broker_depths()[dead_letter_queue_name("payment")] == 1  # the broker's copy stays
    else:
        # A classic queue has no delivery limit: the message goes round and round.
        wait_until(
            lambda: len(crash_runs(crash_log)) >= DELIVERY_LIMIT + 3,
            timeout=TIMEOUT,
            what=f"the poison message to kill {DELIVERY_LIMIT + 3} pool processes",
            diagnostics=workers.tails,
        )
        assert {task_id for task_id, _ in crash_runs(crash_log)} == {poison}
        assert DeadLetterOps(rt).broker_depths() == {dead_letter_queue_name(s): 0 for s in SERVICES}

    # The orders around it went through, untouched, and the worker is still serving.
    wait_all_terminal(system, [p.order_id for p in placed], workers, TIMEOUT)
    assert_outcomes(system, placed, workers)
    report = assert_audit_clean(system, placed, workers)
    assert report.dead_letters == (1 if quorum else 0), report.summary()
    assert workers.exited() == {}, f"worker(s) exited: {workers.exited()}\n{workers.tails()}"
    if quorum:
        assert len(crash_runs(crash_log)) == DELIVERY_LIMIT + 1, "the dead-lettered message ran again"
        # purging the letter takes the broker's copy out too
        assert DeadLetterOps(rt).purge(letter.id) == 1
        assert DeadLetterOps(rt).broker_depths()[dead_letter_queue_name("payment")] == 0


# --- publisher confirms ---------------------------------------------------------------


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("settings_overrides", [CLASSIC], indirect=True, ids=["classic"])
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_publish_the_broker_refuses_is_known_and_sent_again(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
) -> None:
    """Confirms are the publisher's, whatever the queue type; a classic queue refuses at
    once when full (a quorum queue's length limit is soft: it takes one message more)."""
    assert broker.vhost is not None
    rt = system.runtime
    order_db = rt.databases["order"]
    assert rt.celery.conf.broker_transport_options["confirm_publish"] is True
    # The order queue is full: a length limit of 0, and what does not fit is refused.
    policy = '{"max-length": 0, "overflow": "reject-publish"}'
    rabbitmqctl("set_policy", "-p", broker.vhost, "--apply-to", "queues", "full", "^order$", policy)
    try:
        wait_until(lambda: policies(broker.vhost).get("order") == "full", timeout=30, what="the policy on queue order")
        order_id, created = rt.order.place(validate_order("confirm", items=[{"sku": "MUG-01", "qty": 1}]))
        assert created
        # The broker said no, so OrderPlaced is still in the outbox: nothing was lost.
        unpublished = [e for e in order_db.unpublished(0) if e.key == order_id]
        assert [e.event_type for e in unpublished] == ["OrderPlaced"], unpublished

        # Without publisher confirms the same refusal goes unnoticed: the publish "succeeds".
        with Connection(broker.url) as plain:
            Producer(plain.default_channel).publish(
                {"unconfirmed": True}, exchange=EXCHANGE, routing_key="order.task", declare=[EXCHANGE]
            )
        assert system.runtime.order.status(order_id) == "PENDING"
    finally:
        rabbitmqctl("clear_policy", "-p", broker.vhost, "full")

    # Once the queue takes messages again, the order worker's outbox sweep sends the event.
    wait_all_terminal(system, [order_id], workers, TIMEOUT)
    assert rt.order.view(order_id).status == "COMPLETED"
    # the order's last event (OrderCompleted) is sent just after the commit that completes it
    wait_until(
        lambda: [e for e in order_db.unpublished(0) if e.key == order_id] == [],
        timeout=TIMEOUT,
        what="every event of the order to leave the outbox",
    )
    # ... and the unconfirmed message is gone: had it reached the queue, the order worker
    # would have dead-lettered it (a body that is not a task message).
    assert rt.dead_letters.find() == []


# --- a process with other queue settings is refused ----------------------------------


@pytest.mark.brokers
@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_process_declaring_classic_queues_is_refused_by_quorum_ones(
    broker: BrokerNamespace, system: System, database: str
) -> None:
    classic = Runtime(Settings(broker_url=broker.url, database_url=database))
    try:
        with pytest.raises(RuntimeError, match="CHECKOUT_RABBITMQ_QUEUE_TYPE") as refused:
            classic.declare_queues()
    finally:
        classic.close()
    assert "inequivalent arg" in str(refused.value), refused.value
    # The queues are as they were.
    assert broker.vhost is not None
    assert {queue_listing(broker.vhost)[s]["type"] for s in SERVICES} == {"quorum"}
