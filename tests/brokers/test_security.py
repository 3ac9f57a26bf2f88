"""Message signing and the message size limit on Redis and RabbitMQ, with the four
services as separate ``celery worker`` processes and PostgreSQL.

Every process of the test signs with one throwaway key (its PEM passed in
``CHECKOUT_SIGNING_KEY`` itself, as a secret store would) and trusts one certificate.

* A batch of 60 orders over every row of the test vocabulary ends as predicted with
  signing on: chords, chains, error callbacks, retries, dead letters, the relay's events,
  worker pings and the result backend (Redis, or PostgreSQL behind RabbitMQ) all work
  signed; the auditor is clean. On Redis the stored results are signed, not plain JSON.
* Forgeries published straight to the broker after an order completed: a ``payment.refund``
  that is not signed, one signed with a forger's key under the system certificate's name,
  a ``payment.capture`` signed by an unknown certificate — and a validly signed message
  larger than ``CHECKOUT_MAX_MESSAGE_BYTES``. Each is dead-lettered once with its reason
  (on RabbitMQ it is also in ``payment.dlq``), the gateway's ledger shows no refund, the
  workers are alive and answer, and the next order completes. The same refund signed with
  the system's key refunds a second order: the signature is all that made the difference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.adapters.fake_gateway import ledger
from app.api import System, validate_order
from app.messaging.consumer import FORGED
from app.operations.dlq import DeadLetterOps
from app.persistence.deadletters import DEAD, DeadLetter
from tests.brokers.test_multiprocess import (
    SQLITE_TOTAL_ORDERS,
    SQLITE_VOCABULARY,
    run_mixed_orders,
    wait_all_terminal,
    wait_dlq_depths,
)
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, redis_client, redis_keys
from tests.support.signing import Signer, cert_store, make_signer, publish, signing_overrides, task_message

TIMEOUT = 60.0


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path / "keys", "system")


@pytest.fixture
def settings_overrides(tmp_path: Path, signer: Signer) -> dict[str, Any]:
    """Signing on for this process and every worker; the key itself travels in the environment."""
    store = cert_store(tmp_path / "trusted", signer)
    return signing_overrides(signer, store) | {"signing_key": signer.key_pem()}


@pytest.mark.brokers
@pytest.mark.timeout(420)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_batch_of_orders_completes_with_signing_on(
    broker: BrokerNamespace, system: System, workers: Workers, process_env: dict[str, str], record_property: Any
) -> None:
    assert process_env["CHECKOUT_SIGNING"] == "on" and "PRIVATE KEY" in process_env["CHECKOUT_SIGNING_KEY"]
    assert system.runtime.celery.conf.accept_content == ["auth"]
    placed = run_mixed_orders(
        broker, system, workers, SQLITE_VOCABULARY, SQLITE_TOTAL_ORDERS, f"{broker.kind}+signed", record_property
    )
    assert not [d for d in system.runtime.dead_letters.find() if d.reason.startswith(FORGED)]
    if broker.kind == "redis":
        # what the result backend holds is signed too: base64 of signer, signature and body
        keys = redis_keys(f"{broker.namespace}:celery-task-meta-{placed[0].order_id}*")
        assert keys, "no stored results"
        client = redis_client()
        try:
            raw = client.get(keys[0])
        finally:
            client.close()
        assert raw is not None and not raw.lstrip().startswith(b"{"), raw[:80]


def place(system: System, customer: str) -> str:
    order_id, created = system.runtime.order.place(validate_order(customer, [{"sku": "MUG-01", "qty": 1}]))
    assert created
    return order_id


def gateway_operations(system: System, order_id: str) -> set[str]:
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(select(ledger.c.operation).where(ledger.c.reference == order_id)).all()
    )
    return {r.operation for r in rows}


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_forged_unsigned_and_oversized_messages_are_dead_lettered_and_refund_nothing(
    broker: BrokerNamespace, system: System, workers: Workers, signer: Signer, tmp_path: Path
) -> None:
    rt = system.runtime
    app = rt.celery
    order_id = place(system, "victim")
    wait_all_terminal(system, [order_id], workers, TIMEOUT)
    assert rt.order.view(order_id).status == "COMPLETED"
    assert gateway_operations(system, order_id) == {"authorize", "capture"}

    impostor = make_signer(tmp_path / "forger", "impostor", serial=signer.serial, issuer="checkout system")
    stranger = make_signer(tmp_path / "forger", "stranger")
    limit = rt.settings.max_message_bytes
    sent = {
        "unsigned refund": task_message(app, "payment.refund", {"order_id": order_id}),
        "impostor's refund": task_message(app, "payment.refund", {"order_id": order_id}, impostor),
        "stranger's capture": task_message(app, "payment.capture", {"order_id": order_id}, stranger),
        "oversized": task_message(app, "payment.refund", {"order_id": order_id, "pad": "x" * limit}, signer),
    }
    expected_reason = {
        "unsigned refund": f"{FORGED}: not signed",
        "impostor's refund": f"{FORGED}: ",
        "stranger's capture": f"{FORGED}: ",
        "oversized": f"message too large: {len(sent['oversized'].body)} bytes, over CHECKOUT_MAX_MESSAGE_BYTES={limit}",
    }
    for message in sent.values():
        publish(app, message, "payment.task")

    def letters() -> dict[str, DeadLetter]:
        return {d.message_key: d for d in rt.dead_letters.find()}

    found = wait_until(
        lambda: found if len(found := letters()) >= len(sent) else None,
        timeout=TIMEOUT,
        interval=0.1,
        what=f"{len(sent)} dead letters",
        diagnostics=lambda: f"dead letters: {[(d.task, d.reason) for d in letters().values()]}\n{workers.tails()}",
    )
    assert set(found) == {m.task_id for m in sent.values()}, [(d.task, d.reason) for d in found.values()]
    for label, message in sent.items():
        letter = found[message.task_id]
        assert letter.reason.startswith(expected_reason[label]), (label, letter.reason)
        assert (letter.queue, letter.task, letter.attempts, letter.status) == (
            "payment",
            message.headers["task"],
            1,
            DEAD,
        ), label
    assert found[sent["oversized"].task_id].message["truncated"] is True
    if broker.kind == "rabbitmq":
        wait_dlq_depths(broker, system, Counter({"payment": len(sent)}), workers)

    # Nothing was refunded or captured again, and the order is as it was.
    assert gateway_operations(system, order_id) == {"authorize", "capture"}, "a forged message moved money"
    assert rt.order.view(order_id).status == "COMPLETED"

    # The workers are alive and answer (a ping is signed too), and the next order completes.
    assert workers.exited() == {}, f"worker(s) exited: {workers.exited()}\n{workers.tails()}"
    workers.wait_ready(app, timeout=15)
    other = place(system, "control")
    wait_all_terminal(system, [other], workers, TIMEOUT)
    assert rt.order.view(other).status == "COMPLETED"

    # The very refund the forger sent, signed with the system's key, is obeyed.
    publish(app, task_message(app, "payment.refund", {"order_id": other}, signer), "payment.task")
    wait_until(
        lambda: "refund" in gateway_operations(system, other),
        timeout=TIMEOUT,
        what="the genuinely signed refund",
        diagnostics=workers.tails,
    )
    assert gateway_operations(system, order_id) == {"authorize", "capture"}
    assert len(letters()) == len(sent)

    # An oversized message kept only its first bytes: it cannot be sent again.
    with pytest.raises(ValueError, match="cannot be sent again"):
        DeadLetterOps(rt).redrive(found[sent["oversized"].task_id].id)
