"""A step's attempts and duration, bound by the task adapter, reach its record and its events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.domain.commands import AuthorizePayment, ReleaseInventory, ReserveInventory
from app.domain.events import Envelope, InventoryReserved
from app.domain.values import Line
from app.persistence import attempts
from app.persistence.db import as_utc, utcnow
from tests.conftest import Services

OID = "order-1"
LINES = (Line(sku="MUG-01", qty=1),)


def step_row(services: Services, service: str, step: str) -> Any:
    steps = services.dbs[service].tables.steps
    return services.dbs[service].query(
        lambda c: c.execute(select(steps).where(steps.c.order_id == OID, steps.c.step == step)).one()
    )


@pytest.mark.timeout(30)
def test_the_bound_attempt_is_recorded_with_the_step_and_its_event(services: Services) -> None:
    started = utcnow() - timedelta(seconds=2)
    with attempts.attempt("authorize_payment", 3, started):
        record = services.payment.authorize(
            AuthorizePayment(order_id=OID, amount_cents=1299, currency="EUR", payment_token="tok_ok")
        )
    assert record.outcome == "done"
    row = step_row(services, "payment", "authorize_payment")
    assert row.attempts == 3 and as_utc(row.started_at) == started
    (event,) = services.dbs["payment"].log(OID)
    assert event.event_type == "PaymentAuthorized" and event.attempts == 3
    assert event.duration_ms is not None and 2000 <= event.duration_ms < 10_000
    # what the outbox sweep would publish again carries them too
    assert Envelope.model_validate(event.to_wire()) == event


@pytest.mark.timeout(30)
def test_a_compensation_does_not_lend_its_attempts_to_the_step_it_prevents(services: Services) -> None:
    with attempts.attempt("release_inventory", 2, utcnow()):
        assert services.inventory.release(ReleaseInventory(order_id=OID)).outcome == "noop"
    assert step_row(services, "inventory", "release_inventory").attempts == 2
    prevented = step_row(services, "inventory", "reserve_inventory")
    assert prevented.outcome == "prevented"
    assert prevented.attempts is None and prevented.started_at is None


@pytest.mark.timeout(30)
def test_without_a_bound_attempt_nothing_is_claimed(services: Services) -> None:
    services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    assert step_row(services, "inventory", "reserve_inventory").attempts is None
    (event,) = services.dbs["inventory"].log(OID)
    assert (event.attempts, event.duration_ms) == (None, None)
    assert attempts.current() is None


def test_an_event_without_attempts_keeps_its_old_wire_shape() -> None:
    env = Envelope.wrap(InventoryReserved(order_id=OID, lines=LINES))
    wire = env.to_wire()
    assert "attempts" not in wire and "duration_ms" not in wire
    assert Envelope.model_validate(wire) == env
    stamped = Envelope.wrap(InventoryReserved(order_id=OID, lines=LINES), attempts=2, duration_ms=150)
    assert (stamped.to_wire()["attempts"], stamped.to_wire()["duration_ms"]) == (2, 150)
