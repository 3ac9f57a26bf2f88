"""The task adapters, run eagerly with ``Task.apply`` (no broker, no worker).

Eager mode's limits, and why these tests stay small: it does not serialize or route
messages, runs retries inline at once (countdowns ignored), and does not run chord error
callbacks — so the canvas's behaviour is tested with real workers in tests/integration.
What eager mode does show faithfully is how a task maps service outcomes to Celery:
success, business failure (StepFailed, never retried), transient failure (retried, then
recorded as failed) and a bug (not retried: a dead letter).
"""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject

from app.bootstrap import Runtime
from app.domain.errors import StepFailed


def authorize_body(token: str) -> dict[str, object]:
    return {"order_id": "o-1", "amount_cents": 1000, "currency": "EUR", "payment_token": token}


def test_success_returns_the_outcome(rt: Runtime) -> None:
    result = rt.celery.tasks["payment.authorize"].apply(args=(authorize_body("tok_ok"),))
    assert result.successful()
    assert result.result == {"order_id": "o-1", "step": "authorize_payment", "outcome": "done"}


def test_business_failure_stops_without_retry(rt: Runtime) -> None:
    result = rt.celery.tasks["payment.authorize"].apply(args=(authorize_body("tok_declined"),))
    assert result.failed() and isinstance(result.result, StepFailed)
    assert result.result.reason == "card_declined"
    assert [e.event_type for e in rt.databases["payment"].log()] == ["PaymentDeclined"]


def test_transient_failure_is_retried_until_it_passes(rt: Runtime) -> None:
    result = rt.celery.tasks["payment.authorize"].apply(args=(authorize_body("tok_flaky"),))
    assert result.successful()
    assert [e.event_type for e in rt.databases["payment"].log()] == ["PaymentAuthorized"]


def test_exhausted_retries_record_the_failure_and_dead_letter_the_message(rt: Runtime) -> None:
    result = rt.celery.tasks["payment.authorize"].apply(args=(authorize_body("tok_down"),))
    assert isinstance(result.result, Reject) and result.result.requeue is False
    assert [e.event_type for e in rt.databases["payment"].log()] == ["PaymentFailed"]
    (letter,) = rt.dead_letters.find()
    assert (letter.queue, letter.task, letter.order_id) == ("payment", "payment.authorize", "o-1")
    assert letter.reason == f"retries exhausted ({rt.settings.retry_max}): payment_unavailable"
    assert letter.attempts == rt.settings.retry_max + 1
    assert "TransientFailure" in letter.traceback
    assert letter.message["signature"]["task"] == "payment.authorize"
    assert letter.message["signature"]["options"]["retries"] == 0


def test_a_connection_pool_timeout_is_retried(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    real = rt.payment.authorize
    calls = []

    def busy_pool_first(cmd: Any, causation_id: Any = None) -> Any:
        calls.append(cmd)
        if len(calls) == 1:
            raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached, connection timed out")
        return real(cmd, causation_id)

    monkeypatch.setattr(rt.payment, "authorize", busy_pool_first)
    rt_app = rt.make_celery("pool-test")  # (a step's handler is bound when its task is defined)
    result = rt_app.tasks["payment.authorize"].apply(args=(authorize_body("tok_ok"),))
    assert result.successful() and len(calls) == 2
    assert [e.event_type for e in rt.databases["payment"].log()] == ["PaymentAuthorized"]
    assert rt.dead_letters.find() == []


def test_a_malformed_command_is_dead_lettered_at_once(rt: Runtime) -> None:
    body = {"order_id": "o-2", "amount_cents": -5, "currency": "EUR", "payment_token": "tok_ok"}
    result = rt.celery.tasks["payment.authorize"].apply(args=(body,))
    assert isinstance(result.result, Reject)
    (letter,) = rt.dead_letters.find()
    assert letter.reason.startswith("invalid AuthorizePayment: amount_cents:")
    assert letter.attempts == 1
    assert rt.databases["payment"].log() == []


def test_a_bug_is_not_retried_and_its_message_is_kept_as_a_dead_letter(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(cmd: object, causation_id: object = None) -> None:
        calls.append(cmd)
        raise ValueError("bug")

    monkeypatch.setattr(rt.shipping, "schedule", broken)
    rt_app = rt.make_celery("bug-test")
    body = {"order_id": "o-1", "ship_to": {"country": "GB"}, "lines": [{"sku": "MUG-01", "qty": 1}]}
    result = rt_app.tasks["shipping.schedule"].apply(args=(body,))
    assert result.state == "REJECTED"  # no requeue; RabbitMQ sends it to shipping.dlq
    assert len(calls) == 1
    (letter,) = rt.dead_letters.find(order_id="o-1")
    assert (letter.queue, letter.task, letter.attempts) == ("shipping", "shipping.schedule", 1)
    assert letter.reason == "unexpected error: ValueError: bug" and "ValueError: bug" in letter.traceback


def test_backoff_grows_and_is_capped() -> None:
    from app.messaging.tasks import backoff

    delays = [backoff(n, 0.1, 1.0) for n in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**n)
        assert ceiling / 2 <= delay <= ceiling


def test_an_error_callback_compensates_only_once_a_failure_event_confirms_it(rt: Runtime) -> None:
    from app.api import validate_order
    from app.domain.events import Envelope, InventoryReserved, PaymentDeclined
    from app.services.order import orders

    order_id, _ = rt.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))

    def saga_state() -> tuple[str, bool]:
        row = rt.databases["order"].query(
            lambda c: c.execute(orders.select().where(orders.c.order_id == order_id)).one()
        )
        return row.saga_state, row.compensation_dispatched_at is not None

    compensate = rt.celery.tasks["order.compensate"]
    record = rt.celery.tasks["order.record"]
    record.apply(args=(Envelope.wrap(InventoryReserved(order_id=order_id, lines=[])).to_wire(),))
    # a spurious report: the step succeeded
    assert compensate.apply(args=({"order_id": order_id, "failed_step": "reserve_inventory"},)).successful()
    assert saga_state() == ("RUNNING", False)
    # a report nothing confirms yet is kept, not acted on ...
    assert compensate.apply(args=({"order_id": order_id, "failed_step": "schedule_shipping"},)).successful()
    assert saga_state() == ("RUNNING", False)
    # ... until the failure event arrives
    record.apply(args=(Envelope.wrap(PaymentDeclined(order_id=order_id, reason="card_declined")).to_wire(),))
    assert saga_state() == ("COMPENSATING", True)


def test_an_event_consumer_reads_newer_metadata_but_dead_letters_what_it_cannot_read(rt: Runtime) -> None:
    """A rolling upgrade: envelope metadata a newer producer added is ignored; a payload that
    does not fit its type's registered version, or a version this code does not know, is
    kept as a dead letter (with its order, for `dlq redrive --order`) and has no effect."""
    from app.api import validate_order
    from app.domain.events import Envelope, InventoryReserved
    from app.domain.values import Line

    order_id, _ = rt.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
    record = rt.celery.tasks["order.record"]

    def reserved() -> dict[str, Any]:
        return Envelope.wrap(InventoryReserved(order_id=order_id, lines=(Line(sku="MUG-01", qty=1),))).to_wire()

    newer_metadata = {**reserved(), "attempts": 1, "duration_ms": 3, "region": "eu-west-1"}
    assert record.apply(args=(newer_metadata,)).successful()
    unknown_field = reserved()
    unknown_field["payload"]["warehouse"] = "W1"
    newer_version = {**reserved(), "version": InventoryReserved.VERSION + 1}
    for body in (unknown_field, newer_version):
        result = record.apply(args=(body,))
        assert isinstance(result.result, Reject) and result.result.requeue is False

    assert [e.type for e in rt.order.view(order_id).events] == ["OrderPlaced", "InventoryReserved"]
    letters = sorted(rt.dead_letters.find(order_id=order_id), key=lambda d: d.reason)
    assert [(d.task, d.attempts) for d in letters] == [("order.record", 1)] * 2
    assert letters[0].reason.startswith("invalid InventoryReserved version 1 payload: warehouse: Extra inputs")
    assert letters[1].reason == (
        "unreadable event: InventoryReserved v2 is newer than this worker reads (up to v1): "
        "upgrade the consumer, then redrive"
    )


def test_a_sweep_round_that_loses_the_broker_ends_for_the_next_round_to_do_again(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep is periodic: a round the broker (or a database) goes away in is done again by
    the next, so it must not become a dead letter nobody can usefully redrive."""
    from kombu.exceptions import OperationalError

    def broker_away(*_args: Any) -> Any:
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr("app.bootstrap.redrive_overdue", broker_away)
    with caplog.at_level("WARNING", logger="checkout.sweeper"):
        result = rt.celery.tasks["order.sweep"].apply()
    assert result.successful() and result.result == "stopped: OperationalError"
    assert rt.dead_letters.find() == []
    assert "sweep stopped, OperationalError: [Errno 111] Connection refused; the next round starts over" in caplog.text

    def a_bug(*_args: Any) -> Any:
        raise KeyError("steps")

    monkeypatch.setattr("app.bootstrap.redrive_overdue", a_bug)
    result = rt.celery.tasks["order.sweep"].apply()
    assert isinstance(result.result, Reject)  # a bug in the sweep is still kept where an operator sees it
    (letter,) = rt.dead_letters.find()
    assert letter.task == "order.sweep" and "KeyError" in letter.reason
