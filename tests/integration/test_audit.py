"""The auditor's blind spots, closed: each check below is shown catching what it names,
on the books a real run wrote (the demo's orders), tampered with one fault at a time."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, insert, update

import app
from app.adapters.fake_carrier import bookings
from app.adapters.fake_gateway import ledger
from app.api import System, admit_and_place, validate_order
from app.bootstrap import Runtime
from app.operations.audit import audit
from app.operations.dlq import RESOLVED
from app.persistence.db import utcnow
from app.services.inventory import reservations
from app.services.order import orders


def place_two(api: System) -> tuple[str, str]:
    completed = app.place_order("c", [{"sku": "MUG-01", "qty": 2}])
    cancelled = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], ship_to={"country": "AQ"})
    assert app.wait_for_order(completed, timeout=30).status == "COMPLETED"
    assert app.wait_for_order(cancelled, timeout=30).status == "CANCELLED"
    report = audit(api.runtime, settle=10)
    assert report.clean and report.warnings == [], report.violations
    return completed, cancelled


def write(api: System, service: str, statement: Any) -> None:
    with api.runtime.databases[service].engine.begin() as conn:
        conn.execute(statement)


def ledger_row(order_id: str, operation: str, amount: int) -> Any:
    return insert(ledger).values(
        idempotency_key=f"{order_id}:{operation}:forged",
        operation=operation,
        reference=order_id,
        amount_cents=amount,
        attempts=1,
        outcome="ok",
        result_ref="x",
        updated_at=utcnow(),
    )


FAULTS: dict[str, tuple[Callable[[str, str, int], tuple[str, Any]], str]] = {
    "a refund on a completed order": (
        lambda done, _c, total: ("payment", ledger_row(done, "refund", total)),
        "{done}: COMPLETED but the gateway refunded",
    ),
    "a capture of the wrong amount": (
        lambda done, _c, total: (
            "payment",
            update(ledger).where(ledger.c.reference == done, ledger.c.operation == "capture").values(amount_cents=1),
        ),
        "{done}: gateway capture of 1, the order's total is {total}",
    ),
    "a completed order the carrier never booked": (
        lambda done, _c, _t: ("shipping", delete(bookings).where(bookings.c.reference == done)),
        "{done}: COMPLETED but the carrier has it not booked",
    ),
    "a cancelled order's booking left standing": (
        lambda _d, cancelled, _t: (
            "shipping",
            insert(bookings).values(
                idempotency_key=f"{cancelled}:schedule",
                operation="schedule",
                reference=cancelled,
                tracking_ref="TRK-LEFT",
                updated_at=utcnow(),
            ),
        ),
        "{cancelled}: CANCELLED but the carrier's booking TRK-LEFT was never cancelled",
    ),
    "stock committed for other lines than the order's": (
        lambda done, _c, _t: (
            "inventory",
            update(reservations)
            .where(reservations.c.order_id == done)
            .values(lines=[{"sku": "MUG-01", "qty": 1}, {"sku": "TEE-01", "qty": 1}]),
        ),
        "{done}: committed stock {{'MUG-01': 1, 'TEE-01': 1}} is not the order's lines {{'MUG-01': 2}}",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_auditor_names_what_the_books_say_went_wrong(api: System, fault: str) -> None:
    done, cancelled = place_two(api)
    total = api.runtime.order.view(done).total_cents
    tamper, expected = FAULTS[fault]
    service, statement = tamper(done, cancelled, total)
    write(api, service, statement)
    report = audit(api.runtime)
    said = expected.format(done=done, cancelled=cancelled, total=total)
    assert not report.clean
    assert any(said in v for v in report.violations), report.violations


@pytest.mark.timeout(120)
def test_a_deadline_cancellation_is_a_warning_and_a_resolved_letter_on_an_open_order_a_violation(
    api: System,
) -> None:
    rt = api.runtime
    done, cancelled = place_two(api)
    write(api, "order", update(orders).where(orders.c.order_id == cancelled).values(reason="deadline_exceeded"))
    report = audit(rt)
    assert report.clean, report.violations
    (warning,) = report.warnings
    assert warning.startswith(f"order {cancelled}: cancelled as deadline_exceeded")
    assert report.summary().endswith(", 1 warning(s)")

    rt.dead_letters.record(
        "payment",
        message_key="m-1",
        queue="payment",
        task="payment.void",
        order_id=done,
        reason="retries exhausted (1): payment_unavailable",
        error="x",
        traceback="",
        attempts=2,
        message={},
    )
    (letter,) = rt.dead_letters.find(order_id=done)
    rt.dead_letters.set_status(letter, RESOLVED)
    write(api, "order", update(orders).where(orders.c.order_id == done).values(status="NEEDS_ATTENTION"))
    report = audit(rt)
    assert any(f"is marked resolved, but its order {done} is still NEEDS_ATTENTION" in v for v in report.violations), (
        report.violations
    )


@pytest.mark.timeout(60)
def test_the_auditor_asked_to_drain_counts_what_is_still_queued(rt: Runtime) -> None:
    """No worker here: the order's start stays queued. The books alone cannot tell a saga in
    flight from a finished one's; the broker can."""
    order_id = admit_and_place(rt, validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
    started = time.monotonic()
    report = audit(rt, drain=0.5)
    assert time.monotonic() - started >= 0.5  # it waited for the queues to drain
    queued = [v for v in report.violations if v.startswith("broker: ")]
    # orchestration: the order's start; choreography: OrderPlaced for each service that reacts
    assert queued and all(
        re.fullmatch(r"broker: 1 message\(s\) still queued on \w+: sagas are in flight, these books are not final", v)
        for v in queued
    ), report.violations
    assert any(order_id in v and "not finished" in v for v in report.violations)
    assert not any(v.startswith("broker:") for v in audit(rt).violations)  # the books alone, as before
