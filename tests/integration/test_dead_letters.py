"""Dead letters on the embedded system: exhausted retries, malformed messages, redrive."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import app
import app.api
from app.api import System
from app.domain.errors import NotParked, OrderFinished
from app.operations.audit import audit
from app.operations.dlq import OPERATOR_REASON, DeadLetterOps
from app.services.payment import payment_rows
from config.settings import Settings
from tests.conftest import publish_raw, purge_memory_broker, wait_until


@pytest.fixture
def quick(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """An embedded system whose persistent tasks give up after 4 quick retries."""
    purge_memory_broker()
    system = System(settings.model_copy(update={"retry_max": 1})).start()
    monkeypatch.setattr(app.api, "_system", system)
    yield system
    system.stop()
    purge_memory_broker()


def db_down(*_: Any, **__: Any) -> Any:
    raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


@pytest.fixture
def outage() -> Iterator[pytest.MonkeyPatch]:
    """Patches that break a service until ``outage.undo()`` (the test's own patches stay)."""
    patches = pytest.MonkeyPatch()
    yield patches
    patches.undo()


#: The task that authorizes a payment, per saga mode.
AUTHORIZE = {"orchestration": "payment.authorize", "choreography": "payment.authorize_on_placed"}
#: The task that gives the stock back on a failure, per saga mode.
RELEASE = {"orchestration": "inventory.release", "choreography": "inventory.undo"}


def test_exhausted_step_is_dead_lettered_and_the_saga_compensates(api: System, saga_mode: str) -> None:
    order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_down")
    view = app.wait_for_order(order_id, timeout=60)
    assert (view.status, view.reason) == ("CANCELLED", "payment_unavailable")
    # (in choreography the order may be cancelled, on the failure event, before the step
    # that gave up has finished keeping its message)
    (letter,) = wait_until(lambda: DeadLetterOps(api.runtime).letters(), timeout=10, what="the dead letter")
    assert (letter.queue, letter.task, letter.order_id) == ("payment", AUTHORIZE[saga_mode], order_id)
    assert "payment_unavailable" in letter.reason
    assert letter.attempts == api.runtime.settings.retry_max + 1
    assert letter.first_failed_at < letter.last_failed_at
    assert "TransientFailure" in letter.traceback
    report = audit(api.runtime, settle=10)
    assert report.clean and report.dead_letters == 1, report.violations


def test_redrive_resumes_a_saga_held_up_by_dead_letters(
    quick: System, outage: pytest.MonkeyPatch, saga_mode: str
) -> None:
    rt = quick.runtime
    ops = DeadLetterOps(rt)
    outage.setattr(rt.order, "record", db_down)  # the order service's database is down
    order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_declined")
    # Orchestration: InventoryReserved and PaymentDeclined could not be recorded; without the
    # failure event the saga's error callback is not borne out, so nothing is compensated yet.
    # Choreography: each service undid its part on PaymentDeclined and said so; the order
    # heard none of it.
    if saga_mode == "orchestration":
        expected = 2
    else:  # (the decline may reach inventory before anything was reserved: then four)
        wait_until(lambda: len(ops.letters(order_id=order_id)) >= 4, timeout=60, what="4 dead letters")
        reserved = "InventoryReserved" in [e.event_type for e in rt.databases["inventory"].log(order_id)]
        expected = 5 if reserved else 4
    wait_until(lambda: len(ops.letters(order_id=order_id)) == expected, timeout=60, what=f"{expected} dead letters")
    assert {d.task for d in ops.letters()} == {"order.record"}
    assert app.get_order(order_id).status == "PENDING"
    report = audit(rt)
    assert any("holds up order" in v for v in report.violations)

    outage.undo()  # the database is back
    if saga_mode == "orchestration":
        assert rt.inventory.levels()["MUG-01"].reserved == 1  # still held: not compensated
    assert len(ops.redrive_order(order_id)) == expected  # the failure event arrives
    view = app.wait_for_order(order_id, timeout=30)
    assert (view.status, view.reason) == ("CANCELLED", "card_declined")
    assert ops.letters() == []
    assert {d.status for d in ops.letters(include_done=True)} == {"REDRIVEN"}
    assert audit(rt, settle=10).clean


def test_redrive_one_letter_resets_its_retries(quick: System, outage: pytest.MonkeyPatch) -> None:
    rt = quick.runtime
    ops = DeadLetterOps(rt)
    outage.setattr(rt.inventory, "on_order_completed", db_down)
    order_id = app.place_order("c", [{"sku": "TEE-01", "qty": 2}])
    assert app.wait_for_order(order_id, timeout=30).status == "COMPLETED"
    (letter,) = wait_until(lambda: ops.letters(), timeout=60, what="a dead letter")
    assert letter.task == "inventory.commit" and letter.attempts == 5
    outage.undo()
    ops.redrive(letter.id[:8])
    wait_until(lambda: rt.inventory.levels()["TEE-01"].committed == 2, timeout=30, what="the stock committed")
    with pytest.raises(ValueError, match="REDRIVEN"):
        ops.redrive(letter.id)
    assert audit(rt, settle=10).clean


def test_a_bug_in_a_handler_keeps_its_message_as_a_dead_letter_to_redrive_once_fixed(
    api: System, outage: pytest.MonkeyPatch
) -> None:
    rt = api.runtime
    ops = DeadLetterOps(rt)

    def bug(_env: Any) -> bool:
        raise KeyError("sku")

    outage.setattr(rt.inventory, "on_order_completed", bug)
    order_id = app.place_order("c", [{"sku": "TEE-01", "qty": 2}])
    assert app.wait_for_order(order_id, timeout=30).status == "COMPLETED"
    (letter,) = wait_until(lambda: ops.letters(), timeout=30, what="a dead letter")
    assert (letter.queue, letter.task, letter.order_id) == ("inventory", "inventory.commit", order_id)
    assert letter.reason == "unexpected error: KeyError: 'sku'" and letter.attempts == 1  # a bug is not retried
    assert "KeyError" in letter.traceback
    assert rt.inventory.levels()["TEE-01"].committed == 0
    outage.undo()  # the fix is deployed
    ops.redrive(letter.id)
    wait_until(lambda: rt.inventory.levels()["TEE-01"].committed == 2, timeout=30, what="the stock committed")
    assert audit(rt, settle=10).clean


@pytest.mark.parametrize("saga_mode", ["orchestration"])  # the saga's start is the canvas's order.start
def test_compensate_an_order_from_its_dead_letters(quick: System, outage: pytest.MonkeyPatch) -> None:
    rt = quick.runtime
    ops = DeadLetterOps(rt)
    outage.setattr(rt.order, "plan_saga", db_down)  # the saga cannot even start
    order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 1}])
    (letter,) = wait_until(lambda: ops.letters(), timeout=60, what="a dead letter")
    assert letter.task == "order.start"
    outage.undo()
    ops.redrive_order(order_id, compensate=True)
    view = app.wait_for_order(order_id, timeout=30)
    assert (view.status, view.reason) == ("CANCELLED", OPERATOR_REASON)
    assert [d.status for d in ops.letters(include_done=True)] == ["RESOLVED"]
    assert audit(rt, settle=10).clean


VOID = {"orchestration": "payment.void", "choreography": "payment.undo"}


def test_an_operator_compensates_a_saga_parked_by_a_void_that_could_not_finish(
    quick: System, outage: pytest.MonkeyPatch, saga_mode: str
) -> None:
    """The auditor names `dlq redrive --order ID --compensate` for a parked saga. It must
    finish the compensation — void the payment, cancel the order — not just mark the dead
    letter resolved while the payment stays authorized."""
    rt = quick.runtime
    ops = DeadLetterOps(rt)
    outage.setattr(rt.payment, "void", db_down)  # the authorization cannot be released
    order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], ship_to={"country": "AQ"})
    view = app.wait_for_order(order_id, timeout=60)
    assert (view.status, view.attention) == ("NEEDS_ATTENTION", "void_payment: payment_unavailable")
    (letter,) = ops.letters(order_id=order_id)
    assert letter.task == VOID[saga_mode]

    outage.undo()  # the cause is fixed; the operator gives up on the saga
    assert ops.redrive_order(order_id, compensate=True) == [letter]
    wait_until(lambda: app.get_order(order_id).status == "CANCELLED", timeout=30, what="the order cancelled")
    view = app.get_order(order_id)
    assert view.reason == "shipping_unavailable"  # the failure the saga had, not the operator's
    (payment,) = [p for p in payment_rows(rt.databases["payment"]) if p["order_id"] == order_id]
    assert payment["status"] == "VOIDED"
    assert [d.status for d in ops.letters(include_done=True, order_id=order_id)] == ["RESOLVED"]
    assert audit(rt, settle=10).clean

    with pytest.raises(OrderFinished, match=f"order {order_id} is CANCELLED: its saga is over"):
        ops.redrive_order(order_id, compensate=True)


def test_malformed_messages_are_dead_lettered_at_once_and_the_workers_go_on(api: System) -> None:
    rt = api.runtime
    ops = DeadLetterOps(rt)
    ids = []
    for n in range(3):
        ids.append(app.place_order("c", [{"sku": "MUG-01", "qty": 1}]))
        publish_raw(api, b"{not json", {}, "payment.task")
        publish_raw(api, json.dumps({"hello": "world"}).encode(), {}, "inventory.task")
        task_id = str(uuid.uuid4())
        headers = {"task": "shipping.teleport", "id": task_id, "lang": "py", "root_id": task_id, "retries": 0}
        publish_raw(api, json.dumps([[{}], {}, {}]).encode(), headers, "shipping.task")
        rt.celery.send_task("payment.authorize", args=({"order_id": f"bad-{n}", "amount_cents": "lots"},))
        ids.append(app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_declined"))
    views = [app.wait_for_order(order_id, timeout=60) for order_id in ids]
    assert [v.status for v in views] == ["COMPLETED", "CANCELLED"] * 3
    letters = wait_until(lambda: (found := ops.letters()) and len(found) >= 12 and found, timeout=30, what="12 letters")
    assert len(letters) == 12
    reasons = sorted({d.reason.split(":")[0].split(" '")[0] for d in letters})
    assert reasons == ["invalid AuthorizePayment", "not a task message", "undecodable message", "unknown task"]
    assert all(d.attempts == 1 for d in letters)
    report = audit(rt, settle=10)
    assert report.clean and report.dead_letters == 12, report.violations


def test_a_compensation_that_cannot_finish_parks_the_saga(
    quick: System, outage: pytest.MonkeyPatch, saga_mode: str
) -> None:
    rt = quick.runtime
    outage.setattr(rt.inventory, "release", db_down)  # the stock cannot be given back
    order_id = app.place_order("c", [{"sku": "LAMP-01", "qty": 3}], payment_token="tok_declined")
    view = app.wait_for_order(order_id, timeout=60)
    assert view.status == "NEEDS_ATTENTION"
    assert view.attention == "release_inventory: inventory_unavailable"
    assert [v.order_id for v in rt.order.needing_attention()] == [order_id]
    (letter,) = DeadLetterOps(rt).letters(order_id=order_id)
    assert letter.task == RELEASE[saga_mode]
    report = audit(rt)
    assert any("NEEDS_ATTENTION" in v and "release_inventory" in v for v in report.violations)

    outage.undo()  # the cause is fixed; the operator retries
    DeadLetterOps(rt).retry_order(order_id)
    wait_until(lambda: app.get_order(order_id).status == "CANCELLED", timeout=30, what="the order cancelled")
    view = app.get_order(order_id)
    assert (view.reason, view.attention) == ("card_declined", None)
    assert rt.order.needing_attention() == []
    assert audit(rt, settle=10).clean
    with pytest.raises(NotParked, match=f"order {order_id} is CANCELLED, not NEEDS_ATTENTION"):
        DeadLetterOps(rt).retry_order(order_id)  # retried again: refused, nothing redriven
