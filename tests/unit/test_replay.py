"""Replay and the rebuilt order projection, over the services with no broker."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from app.api import validate_order
from app.domain.commands import (
    AuthorizePayment,
    CancelOrder,
    CapturePayment,
    CompleteOrder,
    ParkOrder,
    ReleaseInventory,
    ReserveInventory,
    ScheduleShipment,
    VoidPayment,
)
from app.domain.events import Envelope, InventoryReserved, PaymentCaptured, PaymentDeclined, PaymentFailed
from app.domain.values import Line
from app.operations.replay import ReplayError, Selection, check, plan_replay, rebuild_orders, rebuilt, send
from app.services.order import OrderFacts, fold, orders
from tests.conftest import Services

pytestmark = pytest.mark.timeout(60)


def deliver(svc: Services) -> None:
    """What the relay and order.record do: every other service's events to the order."""
    for service in ("inventory", "payment", "shipping"):
        for env in svc.dbs[service].log():
            svc.order.record(env)


def place(svc: Services, token: str = "tok_ok") -> str:
    order_id, _ = svc.order.place(validate_order("cust-1", [{"sku": "MUG-01", "qty": 2}], payment_token=token))
    return order_id


def run_saga(svc: Services, order_id: str) -> None:
    """The forward path, then (if a step failed) the compensations, as the canvas runs them."""
    commands = svc.order.step_commands(order_id)
    reserved = svc.inventory.reserve(ReserveInventory.model_validate(commands["reserve_inventory"]))
    authorized = svc.payment.authorize(AuthorizePayment.model_validate(commands["authorize_payment"]))
    if reserved.succeeded and authorized.succeeded:
        svc.shipping.schedule(ScheduleShipment.model_validate(commands["schedule_shipping"]))
        svc.payment.capture(CapturePayment.model_validate(commands["capture_payment"]))
        deliver(svc)
        svc.order.complete(CompleteOrder(order_id=order_id))
    else:
        svc.payment.void(VoidPayment(order_id=order_id))
        svc.inventory.release(ReleaseInventory(order_id=order_id))
        deliver(svc)
        svc.order.compensations_done(CancelOrder(order_id=order_id))


def test_the_rebuilt_projection_matches_the_live_one(services: Services) -> None:
    done, declined, parked = place(services), place(services, "tok_declined"), place(services)
    run_saga(services, done)
    run_saga(services, declined)
    services.order.park(ParkOrder(order_id=parked, step="release_inventory", reason="inventory_unavailable"))
    assert [services.order.status(o) for o in (done, declined, parked)] == ["COMPLETED", "CANCELLED", "NEEDS_ATTENTION"]

    report = rebuild_orders(services.dbs)
    assert report.consistent, report.differences
    assert (report.orders, report.live) == (3, 3)
    rows = {r.order_id: r for r in services.dbs["order"].query(lambda c: c.execute(select(rebuilt)).all())}
    assert (rows[done].status, rows[done].total_cents, rows[done].steps["capture_payment"]) == (
        "COMPLETED",
        2598,
        "done",
    )
    assert (rows[declined].status, rows[declined].reason) == ("CANCELLED", "card_declined")
    assert rows[declined].steps == {
        "reserve_inventory": "done",
        "authorize_payment": "failed",
        "release_inventory": "done",
    }
    assert rows[parked].status == "PENDING"  # parking is not an event

    services.dbs["order"].run(
        lambda uow: uow.conn.execute(update(orders).where(orders.c.order_id == declined).values(reason="out_of_stock"))
    )
    report = rebuild_orders(services.dbs)
    assert [(d.order_id, d.field, d.live, d.rebuilt) for d in report.differences] == [
        (declined, "reason", "out_of_stock", "card_declined")
    ]
    assert report.differing_orders == [declined]


def test_fold_applies_the_rules_of_record(services: Services) -> None:
    order_id = place(services)
    placed = services.dbs["order"].log(order_id)
    reserved = Envelope.wrap(InventoryReserved(order_id=order_id, lines=(Line(sku="MUG-01", qty=2),)))
    declined = Envelope.wrap(PaymentDeclined(order_id=order_id, reason="card_declined"))
    failed = Envelope.wrap(PaymentFailed(order_id=order_id, reason="payment_unavailable", step="capture_payment"))
    facts = fold(order_id, [*placed, reserved, declined, failed, declined])
    assert facts == OrderFacts(
        order_id=order_id,
        customer_id="cust-1",
        status="PENDING",
        total_cents=2598,
        currency="EUR",
        steps={"reserve_inventory": "done", "authorize_payment": "failed", "capture_payment": "failed"},
        failure_reason="card_declined",  # the first failure wins
        event_ids=frozenset(e.event_id for e in [*placed, reserved, declined, failed]),
    )
    for env in (reserved, declined, failed):
        services.order.record(env)
    row = services.dbs["order"].query(lambda c: c.execute(select(orders).where(orders.c.order_id == order_id)).one())
    assert (row.steps, row.failure_reason) == (facts.steps, facts.failure_reason)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str, str]] = []

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        self.sent.append((task, body, message_id, correlation_id))


def test_replay_sends_the_events_a_consumer_takes_with_their_ids(services: Services) -> None:
    order_id = place(services)
    run_saga(services, order_id)
    plan = plan_replay(services.dbs, Selection(order_id=order_id), "order.record")
    assert plan.by_type() == {
        "InventoryReserved": 1,
        "PaymentAuthorized": 1,
        "ShipmentScheduled": 1,
        "PaymentCaptured": 1,
    }
    assert plan.by_type(plan.skipped) == {"OrderPlaced": 1, "OrderCompleted": 1}
    assert plan.already_handled == 4  # deliver() recorded them all
    publisher = Recorder()
    assert send(plan, publisher) == plan.by_type()
    assert [(t, body["event_id"], cid) for t, body, _, cid in publisher.sent] == [
        ("order.record", env.event_id, order_id) for env in plan.events
    ]
    assert all(mid == f"{body['event_id']}:order.record:replay" for _, body, mid, _ in publisher.sent)

    only = plan_replay(services.dbs, Selection(types=("PaymentCaptured", "OrderCompleted")), "order.record")
    assert (only.by_type(), only.by_type(only.skipped)) == ({"PaymentCaptured": 1}, {"OrderCompleted": 1})
    assert not plan_replay(services.dbs, Selection(order_id="no-such-order"), "order.record").events


@pytest.mark.parametrize(
    ("selection", "consumer", "says"),
    [
        (Selection(types=("PaymentTaken",)), "order.record", "known types: OrderPlaced, OrderCompleted"),
        (Selection(order_id="x"), "order.nope", "consumers: inventory.commit, inventory.release_on_cancel"),
        (Selection(types=("OrderPlaced",)), "order.record", "consumers of them: order.start"),
    ],
)
def test_a_bad_type_or_consumer_names_the_valid_ones(selection: Selection, consumer: str, says: str) -> None:
    with pytest.raises(ReplayError, match=says):
        check(selection, consumer)


def test_a_consumer_of_some_of_the_types_is_fine() -> None:
    handled = check(Selection(types=(PaymentCaptured.TYPE, "OrderPlaced")), "order.start")
    assert handled == ("OrderPlaced",)
