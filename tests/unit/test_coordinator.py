"""The orchestrator's decisions, with a fake dispatcher: what it sends, and when it sends
nothing. The saga's memory is the real one, over SQLite; nothing here knows Celery."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.api import validate_order
from app.domain.commands import CompensateOrder
from app.domain.events import Envelope, InventoryReserved, PaymentAuthorized, PaymentDeclined
from app.domain.saga import CHECKOUT, Compensation, Saga
from app.domain.values import Line
from app.persistence.db import utcnow
from app.services.order import (
    COMPENSATED,
    COMPENSATING,
    CONTRADICTED,
    NOT_DUE,
    RESUMED,
    UNCONFIRMED,
    Coordinator,
    OrderService,
    orders,
)
from tests.conftest import Services

EVERY_COMPENSATION = ["refund_payment", "cancel_shipment", "void_payment", "release_inventory"]


@dataclass
class FakeDispatcher:
    """Records what the coordinator sends (the real one builds Celery canvases)."""

    sagas: list[tuple[str, dict[str, dict[str, Any]], frozenset[str]]] = field(default_factory=list)
    compensations: list[tuple[str, list[str], dict[str, Any]]] = field(default_factory=list)

    def run_saga(
        self, saga: Saga, order_id: str, commands: Mapping[str, dict[str, Any]], done: frozenset[str] = frozenset()
    ) -> None:
        self.sagas.append((order_id, dict(commands), done))

    def run_compensation(
        self, saga: Saga, order_id: str, compensations: tuple[Compensation, ...], cancel_command: dict[str, Any]
    ) -> None:
        self.compensations.append((order_id, [c.name for c in compensations], cancel_command))


def coordinator(services: Services) -> tuple[Coordinator, FakeDispatcher]:
    dispatcher = FakeDispatcher()
    return Coordinator(services.order, dispatcher), dispatcher


def place(services: Services, order: OrderService | None = None) -> str:
    request = validate_order("c", [{"sku": "MUG-01", "qty": 2}], payment_token="tok_declined")
    order_id, _ = (order or services.order).place(request)
    return order_id


def test_a_placed_order_s_saga_is_sent_once_with_a_command_per_step(services: Services) -> None:
    coord, sent = coordinator(services)
    order_id = place(services)
    assert coord.start(order_id) is True
    assert coord.start(order_id) is False  # a redelivered OrderPlaced sends nothing more
    ((to, commands, done),) = sent.sagas
    assert to == order_id and done == frozenset()
    assert list(commands) == [step.name for step in CHECKOUT.steps]
    assert commands["reserve_inventory"] == {"order_id": order_id, "lines": [{"sku": "MUG-01", "qty": 2}]}
    assert commands["authorize_payment"] == {
        "order_id": order_id,
        "amount_cents": 2598,
        "currency": "EUR",
        "payment_token": "tok_declined",
    }
    assert commands["complete_order"] == {"order_id": order_id}
    assert sent.compensations == []


def test_a_failure_the_order_knows_succeeded_is_not_compensated(services: Services) -> None:
    coord, sent = coordinator(services)
    order_id = place(services)
    coord.record(Envelope.wrap(InventoryReserved(order_id=order_id, lines=(Line(sku="MUG-01", qty=2),))))
    assert coord.compensate(CompensateOrder(order_id=order_id, failed_step="reserve_inventory")) == CONTRADICTED
    assert sent.compensations == []


def test_an_unconfirmed_failure_is_compensated_when_its_failure_event_arrives(services: Services) -> None:
    coord, sent = coordinator(services)
    order_id = place(services)
    coord.record(Envelope.wrap(PaymentAuthorized(order_id=order_id, amount_cents=2598, currency="EUR")))
    assert coord.compensate(CompensateOrder(order_id=order_id, failed_step="schedule_shipping")) == UNCONFIRMED
    assert sent.compensations == []  # an error callback alone is no proof
    declined = Envelope.wrap(PaymentDeclined(order_id=order_id, reason="card_declined"))
    assert coord.record(declined) is True  # the failure event confirms it: compensate now
    assert sent.compensations == [(order_id, EVERY_COMPENSATION, {"order_id": order_id})]
    assert coord.record(declined) is False  # seen before: nothing more
    assert coord.compensate(CompensateOrder(order_id=order_id, failed_step="schedule_shipping")) == NOT_DUE
    assert len(sent.compensations) == 1


def test_an_operator_s_compensation_goes_out_at_once(services: Services) -> None:
    coord, sent = coordinator(services)
    order_id = place(services)
    cmd = CompensateOrder(order_id=order_id, failed_step="capture_payment", reason="operator")
    assert coord.compensate(cmd) == COMPENSATING
    assert sent.compensations == [(order_id, EVERY_COMPENSATION, {"order_id": order_id})]
    assert services.order.view(order_id).status == "PENDING"  # cancelled once the chain has run


def _overdue(services: Services, order_id: str, age_seconds: float) -> None:
    now = utcnow()
    services.dbs["order"].run(
        lambda uow: uow.conn.execute(
            update(orders)
            .where(orders.c.order_id == order_id)
            .values(
                created_at=now - timedelta(seconds=age_seconds),
                updated_at=now - timedelta(seconds=age_seconds),
                deadline_at=now - timedelta(seconds=1),
            )
        )
    )


def test_an_overdue_saga_is_resumed_after_its_done_steps(services: Services) -> None:
    coord, sent = coordinator(services)
    order_id = place(services)
    coord.record(Envelope.wrap(InventoryReserved(order_id=order_id, lines=(Line(sku="MUG-01", qty=2),))))
    _overdue(services, order_id, age_seconds=400)
    plan = coord.plan_redrive(order_id, timedelta(seconds=900))
    assert plan is not None and coord.redrive(plan) == RESUMED
    ((to, commands, done),) = sent.sagas
    assert (to, done) == (order_id, frozenset({"reserve_inventory"}))
    assert commands == services.order.step_commands(order_id)
    assert coord.plan_redrive(order_id, timedelta(seconds=900)) is None  # not due again yet


def test_a_saga_past_its_give_up_limit_is_compensated(services: Services) -> None:
    coord, sent = coordinator(services)
    order_id = place(services)
    _overdue(services, order_id, age_seconds=1000)
    plan = coord.plan_redrive(order_id, timedelta(seconds=900))
    assert plan is not None and coord.redrive(plan) == COMPENSATED
    assert sent.compensations == [(order_id, EVERY_COMPENSATION, {"order_id": order_id})]
    assert sent.sagas == []


def test_choreography_re_drives_without_sending_a_canvas(services: Services) -> None:
    order = OrderService(services.dbs["order"], choreography=True)
    dispatcher = FakeDispatcher()
    coord = Coordinator(order, dispatcher)
    order_id = place(services, order)
    assert coord.start(order_id) is False  # the saga started with OrderPlaced itself
    _overdue(services, order_id, age_seconds=400)
    plan = coord.plan_redrive(order_id, timedelta(seconds=900))
    assert plan is not None and coord.redrive(plan) == RESUMED
    assert dispatcher.sagas == [] and dispatcher.compensations == []
