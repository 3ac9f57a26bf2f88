"""One end-to-end saga per row of the test vocabulary, on real in-process workers."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

import app
from app.adapters.fake_gateway import ledger
from app.api import System
from app.operations.audit import audit

ROWS: list[tuple[str, dict[str, Any], str, str | None, set[str], set[str]]] = [
    (
        "tok_ok",
        {},
        "COMPLETED",
        None,
        {"InventoryReserved", "PaymentAuthorized", "ShipmentScheduled", "PaymentCaptured", "OrderCompleted"},
        {"OrderCancelled", "PaymentVoided", "InventoryReleased"},
    ),
    (
        "tok_declined",
        {"payment_token": "tok_declined"},
        "CANCELLED",
        "card_declined",
        # the other parallel branch (the reservation) is compensated
        {"PaymentDeclined", "InventoryReserved", "InventoryReleased", "OrderCancelled"},
        {"PaymentAuthorized", "ShipmentScheduled", "PaymentCaptured"},
    ),
    (
        "tok_flaky",
        {"payment_token": "tok_flaky"},
        "COMPLETED",
        None,
        {"PaymentAuthorized", "PaymentCaptured", "OrderCompleted"},
        {"OrderCancelled", "PaymentFailed"},
    ),
    (
        "tok_down",
        {"payment_token": "tok_down"},
        "CANCELLED",
        "payment_unavailable",
        {"PaymentFailed", "InventoryReleased", "OrderCancelled"},
        {"PaymentAuthorized", "ShipmentScheduled"},
    ),
    (
        "qty above stock",
        {"items": [{"sku": "POSTER-01", "qty": 26}]},
        "CANCELLED",
        "out_of_stock",
        # the other parallel branch (the authorization) is compensated
        {"InventoryReservationFailed", "PaymentAuthorized", "PaymentVoided", "OrderCancelled"},
        {"InventoryReserved", "ShipmentScheduled", "PaymentCaptured"},
    ),
    (
        "ship to AQ",
        {"ship_to": {"country": "AQ"}},
        "CANCELLED",
        "shipping_unavailable",
        {"ShipmentFailed", "PaymentVoided", "InventoryReleased", "OrderCancelled"},
        {"ShipmentScheduled", "PaymentCaptured"},
    ),
]


#: Choreography has no chord holding a failure back until the other parallel branch has
#: finished: the failure may reach that branch's service first, which then never acts.
PREEMPTABLE: dict[str, set[str]] = {"tok_declined": {"InventoryReserved"}, "qty above stock": {"PaymentAuthorized"}}


def gateway_attempts(system: System, order_id: str, operation: str) -> int:
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(
            select(ledger.c.attempts).where(ledger.c.reference == order_id, ledger.c.operation == operation)
        ).all()
    )
    return sum(r.attempts for r in rows)


@pytest.mark.parametrize(("label", "kwargs", "status", "reason", "present", "absent"), ROWS, ids=[r[0] for r in ROWS])
def test_vocabulary_row(
    api: System,
    label: str,
    kwargs: dict[str, Any],
    status: str,
    reason: str | None,
    present: set[str],
    absent: set[str],
    saga_mode: str,
) -> None:
    if saga_mode == "choreography":
        present = present - PREEMPTABLE.get(label, set())
    args = {"items": [{"sku": "MUG-01", "qty": 2}], **kwargs}
    order_id = app.place_order("cust-1", **args)
    view = app.wait_for_order(order_id, timeout=60)
    assert (view.status, view.reason) == (status, reason)
    report = audit(api.runtime, settle=10)  # settled: every event has reached the timeline
    assert report.clean, report.violations
    view = app.get_order(order_id)
    types = [e.type for e in view.events]
    assert types[0] == "OrderPlaced"
    assert present <= set(types), types
    assert not absent & set(types), types
    assert [e.time for e in view.events] == sorted(e.time for e in view.events)
    report = audit(api.runtime, settle=10)
    assert report.clean, report.violations
    if label == "tok_flaky":
        assert gateway_attempts(api, order_id, "authorize") == 3  # two transient failures, then success
    if label == "tok_down":
        assert gateway_attempts(api, order_id, "authorize") == api.runtime.settings.retry_max + 1
