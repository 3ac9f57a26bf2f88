"""Each service's steps and compensations, with no broker: effects happen once."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.adapters.fake_carrier import bookings
from app.adapters.fake_gateway import ledger
from app.api import validate_order
from app.domain.commands import (
    AuthorizePayment,
    CancelOrder,
    CancelShipment,
    CapturePayment,
    CompensateOrder,
    CompleteOrder,
    RefundPayment,
    ReleaseInventory,
    ReserveInventory,
    ScheduleShipment,
    VoidPayment,
)
from app.domain.errors import IdempotencyKeyReused, InvalidOrder, OrderNotFound, TransientFailure
from app.domain.events import Envelope
from app.domain.values import DEFAULT_ADDRESS, Address, Line
from app.services.payment import payment_rows
from app.services.shipping import shipment_rows
from tests.conftest import Services

OID = "order-1"
LINES = (Line(sku="MUG-01", qty=3), Line(sku="TEE-01", qty=1))


def log_types(svc: Services, service: str) -> list[str]:
    return [e.event_type for e in svc.dbs[service].log()]


def gateway_ops(svc: Services) -> list[tuple[str, str]]:
    rows = svc.dbs["payment"].query(lambda c: c.execute(select(ledger.c.operation, ledger.c.outcome)).all())
    return sorted((r.operation, r.outcome) for r in rows)


# --- inventory ------------------------------------------------------------------------


def test_reserve_moves_stock_once(services: Services) -> None:
    before = services.inventory.levels()["MUG-01"]
    first = services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    second = services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    after = services.inventory.levels()["MUG-01"]
    assert first.outcome == second.outcome == "done"
    assert (after.available, after.reserved) == (before.available - 3, 3)
    assert log_types(services, "inventory") == ["InventoryReserved"]


def test_out_of_stock_reserves_nothing(services: Services) -> None:
    lines = (Line(sku="MUG-01", qty=1), Line(sku="POSTER-01", qty=26))
    record = services.inventory.reserve(ReserveInventory(order_id=OID, lines=lines))
    assert (record.outcome, record.reason) == ("failed", "out_of_stock")
    levels = services.inventory.levels()
    assert levels["MUG-01"].reserved == 0 and levels["POSTER-01"].reserved == 0
    assert log_types(services, "inventory") == ["InventoryReservationFailed"]
    # a redelivery returns the recorded failure and emits nothing new
    again = services.inventory.reserve(ReserveInventory(order_id=OID, lines=lines))
    assert again.reason == "out_of_stock" and len(log_types(services, "inventory")) == 1


def test_release_returns_stock_once(services: Services) -> None:
    services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    assert services.inventory.release(ReleaseInventory(order_id=OID)).outcome == "done"
    assert services.inventory.release(ReleaseInventory(order_id=OID)).outcome == "done"
    level = services.inventory.levels()["MUG-01"]
    assert (level.available, level.reserved) == (level.initial, 0)
    assert log_types(services, "inventory") == ["InventoryReserved", "InventoryReleased"]


def test_release_before_reserve_is_noop_and_prevents_the_late_reserve(services: Services) -> None:
    assert services.inventory.release(ReleaseInventory(order_id=OID)).outcome == "noop"
    late = services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    assert late.outcome == "prevented"
    assert services.inventory.levels()["MUG-01"].reserved == 0
    assert log_types(services, "inventory") == []


def test_completed_order_commits_reserved_stock_once(services: Services) -> None:
    from app.domain.events import OrderCompleted

    services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    env = Envelope.wrap(OrderCompleted(order_id=OID, total_cents=1, currency="EUR"))
    assert services.inventory.on_order_completed(env) is True
    assert services.inventory.on_order_completed(env) is False
    level = services.inventory.levels()["MUG-01"]
    assert (level.reserved, level.committed) == (0, 3)


def test_cancelled_order_releases_if_not_already(services: Services) -> None:
    from app.domain.events import OrderCancelled

    services.inventory.reserve(ReserveInventory(order_id=OID, lines=LINES))
    env = Envelope.wrap(OrderCancelled(order_id=OID, reason="card_declined"))
    assert services.inventory.on_order_cancelled(env) is True
    assert services.inventory.on_order_cancelled(env) is False
    assert services.inventory.levels()["MUG-01"].reserved == 0


# --- payment --------------------------------------------------------------------------


def authorize(svc: Services, token: str = "tok_ok", amount: int = 5000) -> AuthorizePayment:
    return AuthorizePayment(order_id=OID, amount_cents=amount, currency="EUR", payment_token=token)


def test_authorize_capture_refund_each_once(services: Services) -> None:
    for _ in range(2):
        assert services.payment.authorize(authorize(services)).outcome == "done"
    for _ in range(2):
        assert services.payment.capture(CapturePayment(order_id=OID)).outcome == "done"
    for _ in range(2):
        assert services.payment.refund(RefundPayment(order_id=OID)).outcome == "done"
    (row,) = payment_rows(services.dbs["payment"])
    assert (row["status"], row["captured_cents"], row["refunded_cents"]) == ("REFUNDED", 5000, 5000)
    assert gateway_ops(services) == [("authorize", "ok"), ("capture", "ok"), ("refund", "ok")]
    assert log_types(services, "payment") == ["PaymentAuthorized", "PaymentCaptured", "PaymentRefunded"]


def test_decline_is_recorded_not_retried(services: Services) -> None:
    record = services.payment.authorize(authorize(services, "tok_declined"))
    assert (record.outcome, record.reason) == ("failed", "card_declined")
    assert log_types(services, "payment") == ["PaymentDeclined"]
    assert payment_rows(services.dbs["payment"]) == []


def test_flaky_gateway_fails_twice_then_succeeds(services: Services) -> None:
    cmd = authorize(services, "tok_flaky")
    for _ in range(2):
        with pytest.raises(TransientFailure):
            services.payment.authorize(cmd)
    assert services.payment.authorize(cmd).outcome == "done"


def test_down_gateway_gives_up_with_payment_unavailable(services: Services) -> None:
    with pytest.raises(TransientFailure) as err:
        services.payment.authorize(authorize(services, "tok_down"))
    assert err.value.reason == "payment_unavailable"
    record = services.payment.give_up(OID, "authorize_payment", "payment_unavailable")
    assert record.reason == "payment_unavailable"
    assert log_types(services, "payment") == ["PaymentFailed"]
    services.payment.give_up(OID, "authorize_payment", "payment_unavailable")
    assert log_types(services, "payment") == ["PaymentFailed"]


def test_void_releases_an_authorization_once(services: Services) -> None:
    services.payment.authorize(authorize(services))
    assert services.payment.void(VoidPayment(order_id=OID)).outcome == "done"
    assert services.payment.void(VoidPayment(order_id=OID)).outcome == "done"
    (row,) = payment_rows(services.dbs["payment"])
    assert (row["status"], row["voided_cents"]) == ("VOIDED", 5000)
    assert gateway_ops(services) == [("authorize", "ok"), ("void", "ok")]


def test_void_before_authorize_prevents_the_charge(services: Services) -> None:
    assert services.payment.void(VoidPayment(order_id=OID)).outcome == "noop"
    assert services.payment.authorize(authorize(services)).outcome == "prevented"
    assert gateway_ops(services) == []
    assert payment_rows(services.dbs["payment"]) == []


def test_authorization_that_lands_after_its_void_is_voided_at_the_gateway(services: Services) -> None:
    """The void runs while the gateway call is in flight: the late step undoes itself."""
    real = services.gateway.authorize

    def authorize_while_voided(*args: object, **kwargs: object) -> str:
        ref = real(*args, **kwargs)  # type: ignore[arg-type]
        services.payment.void(VoidPayment(order_id=OID))  # the compensation wins the race
        return ref

    services.gateway.authorize = authorize_while_voided  # type: ignore[method-assign]
    assert services.payment.authorize(authorize(services)).outcome == "prevented"
    assert gateway_ops(services) == [("authorize", "ok"), ("void", "ok")]


def test_a_redelivered_authorization_that_finds_itself_prevented_voids_what_the_crashed_attempt_held(
    services: Services,
) -> None:
    """The attempt crashed between the gateway's authorization and its record; the void ran
    meanwhile (it records the step ``prevented``). The redelivery voids the hold it finds by
    the authorization's idempotency key, instead of returning at once and leaving it open."""
    cmd = authorize(services)
    services.gateway.authorize(cmd.payment_token, 5000, "EUR", idempotency_key=f"{OID}:authorize", reference=OID)
    assert services.payment.void(VoidPayment(order_id=OID)).outcome == "noop"  # nothing recorded to void
    for _ in range(2):  # and a second redelivery voids nothing twice
        assert services.payment.authorize(cmd).outcome == "prevented"
    assert gateway_ops(services) == [("authorize", "ok"), ("void", "ok")]


def test_a_prevented_authorization_with_no_call_behind_it_calls_nothing(services: Services) -> None:
    assert services.payment.void(VoidPayment(order_id=OID)).outcome == "noop"
    assert services.payment.authorize(authorize(services)).outcome == "prevented"
    assert gateway_ops(services) == []


def test_a_capture_that_crashed_before_its_record_is_refunded_when_the_payment_was_voided_since(
    services: Services,
) -> None:
    """The capture went through at the gateway and the attempt died before recording it;
    the compensation then found nothing captured (refund: noop) and voided the
    authorization. The redelivered capture gives the money back."""
    services.payment.authorize(authorize(services))
    (row,) = payment_rows(services.dbs["payment"])
    services.gateway.capture(row["auth_ref"], 5000, idempotency_key=f"{OID}:capture", reference=OID)
    assert services.payment.refund(RefundPayment(order_id=OID)).outcome == "noop"
    assert services.payment.void(VoidPayment(order_id=OID)).outcome == "done"
    for _ in range(2):
        assert services.payment.capture(CapturePayment(order_id=OID)).outcome == "prevented"
    assert gateway_ops(services) == [("authorize", "ok"), ("capture", "ok"), ("refund", "ok"), ("void", "ok")]
    refunded = services.dbs["payment"].query(
        lambda c: c.execute(select(ledger.c.amount_cents).where(ledger.c.operation == "refund")).scalar_one()
    )
    assert refunded == 5000


def test_refund_without_capture_is_noop(services: Services) -> None:
    services.payment.authorize(authorize(services))
    assert services.payment.refund(RefundPayment(order_id=OID)).outcome == "noop"
    assert gateway_ops(services) == [("authorize", "ok")]


# --- shipping -------------------------------------------------------------------------


def schedule(country: str = "GB") -> ScheduleShipment:
    return ScheduleShipment(order_id=OID, ship_to=Address(country=country), lines=LINES)


def test_schedule_and_cancel_once(services: Services) -> None:
    assert services.shipping.schedule(schedule()).outcome == "done"
    assert services.shipping.schedule(schedule()).outcome == "done"
    assert services.shipping.cancel(CancelShipment(order_id=OID)).outcome == "done"
    assert services.shipping.cancel(CancelShipment(order_id=OID)).outcome == "done"
    (row,) = shipment_rows(services.dbs["shipping"])
    assert row["status"] == "CANCELLED"
    assert log_types(services, "shipping") == ["ShipmentScheduled", "ShipmentCancelled"]


def carrier_ops(svc: Services) -> list[str]:
    rows = svc.dbs["shipping"].query(lambda c: c.execute(select(bookings.c.operation)).scalars().all())
    return sorted(rows)


def test_a_redelivered_booking_that_finds_itself_prevented_cancels_what_the_crashed_attempt_booked(
    services: Services,
) -> None:
    services.shipping.carrier.schedule(Address(country="GB"), LINES, idempotency_key=f"{OID}:schedule", reference=OID)
    assert services.shipping.cancel(CancelShipment(order_id=OID)).outcome == "noop"
    for _ in range(2):
        assert services.shipping.schedule(schedule()).outcome == "prevented"
    assert carrier_ops(services) == ["cancel", "schedule"]
    assert shipment_rows(services.dbs["shipping"]) == []


def test_antarctica_is_not_served(services: Services) -> None:
    record = services.shipping.schedule(schedule("AQ"))
    assert (record.outcome, record.reason) == ("failed", "shipping_unavailable")
    assert log_types(services, "shipping") == ["ShipmentFailed"]
    assert services.shipping.cancel(CancelShipment(order_id=OID)).outcome == "noop"


# --- order ----------------------------------------------------------------------------


def place(svc: Services, **kwargs: object) -> str:
    request = validate_order("cust-1", [{"sku": "MUG-01", "qty": 2}], **kwargs)  # type: ignore[arg-type]
    order_id, created = svc.order.place(request)
    assert created
    return order_id


def test_place_prices_the_order_and_logs_order_placed(services: Services) -> None:
    order_id = place(services)
    view = services.order.view(order_id)
    assert (view.status, view.total_cents, view.currency) == ("PENDING", 2 * 1299, "EUR")
    assert [e.type for e in view.events] == ["OrderPlaced"]
    assert log_types(services, "order") == ["OrderPlaced"]


def test_idempotency_key_returns_the_same_order(services: Services) -> None:
    request = validate_order("cust-1", [{"sku": "MUG-01", "qty": 1}], idempotency_key="k-1")
    first, created = services.order.place(request)
    second, created_again = services.order.place(request)
    assert (first, created, created_again) == (second, True, False)
    assert log_types(services, "order") == ["OrderPlaced"]


def test_an_idempotency_key_given_again_with_another_order_is_refused(services: Services) -> None:
    first, _ = services.order.place(validate_order("cust-1", [{"sku": "MUG-01", "qty": 1}], idempotency_key="k-1"))
    # the same order written otherwise (the default address spelt out) is the same order
    address = DEFAULT_ADDRESS.model_dump()
    same = validate_order("cust-1", [{"sku": "MUG-01", "qty": 1}], ship_to=address, idempotency_key="k-1")
    assert services.order.place(same) == (first, False)
    for other in (
        validate_order("cust-1", [{"sku": "MUG-01", "qty": 2}], idempotency_key="k-1"),
        validate_order("cust-2", [{"sku": "MUG-01", "qty": 1}], idempotency_key="k-1"),
        validate_order("cust-1", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_declined", idempotency_key="k-1"),
    ):
        with pytest.raises(IdempotencyKeyReused, match=rf"idempotency_key: already used for another order \({first}\)"):
            services.order.place(other)
        with pytest.raises(IdempotencyKeyReused):
            services.order.find_by_idempotency_key("k-1", other.fingerprint())
    assert services.order.find_by_idempotency_key("k-1", same.fingerprint()) == first
    assert log_types(services, "order") == ["OrderPlaced"]


def test_orders_page_newest_first_from_a_cursor(services: Services) -> None:
    placed = [services.order.place(validate_order(f"c-{n}", [{"sku": "MUG-01", "qty": 1}]))[0] for n in range(5)]
    everything = [r["order_id"] for r in services.order.find(limit=10)]
    assert sorted(everything) == sorted(placed)
    first = [r["order_id"] for r in services.order.find(limit=2)]
    second = [r["order_id"] for r in services.order.find(limit=2, before=first[-1])]
    rest = [r["order_id"] for r in services.order.find(limit=2, before=second[-1])]
    assert first + second + rest == everything and len(rest) == 1
    with pytest.raises(OrderNotFound):
        services.order.find(before="no-such-order")


def test_unknown_sku_writes_nothing(services: Services) -> None:
    with pytest.raises(InvalidOrder, match=r"items\[1\]\.sku"):
        services.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}, {"sku": "NOPE", "qty": 1}]))
    assert log_types(services, "order") == []
    count = services.dbs["order"].query(
        lambda c: c.execute(select(func.count()).select_from(services.dbs["order"].tables.events)).scalar()
    )
    assert count == 0


def test_plan_saga_once_with_a_command_per_step(services: Services) -> None:
    order_id = place(services)
    plan = services.order.plan_saga(order_id)
    assert plan is not None
    assert set(plan.commands) == {
        "reserve_inventory",
        "authorize_payment",
        "schedule_shipping",
        "capture_payment",
        "complete_order",
    }
    assert plan.commands["authorize_payment"]["amount_cents"] == 2598
    services.order.saga_dispatched(order_id)
    assert services.order.plan_saga(order_id) is None


def test_complete_is_idempotent(services: Services) -> None:
    order_id = place(services)
    services.order.complete(CompleteOrder(order_id=order_id))
    services.order.complete(CompleteOrder(order_id=order_id))
    assert services.order.status(order_id) == "COMPLETED"
    assert log_types(services, "order") == ["OrderPlaced", "OrderCompleted"]


def _failure(order_id: str) -> Envelope:
    from app.domain.events import PaymentDeclined

    return Envelope.wrap(PaymentDeclined(order_id=order_id, reason="card_declined"))


@pytest.mark.parametrize("reason_first", [True, False])
def test_cancel_needs_both_the_reason_and_the_compensations(services: Services, reason_first: bool) -> None:
    """Whichever arrives second cancels the order: the outcome does not depend on timing."""
    order_id = place(services)
    plan = services.order.plan_compensation(CompensateOrder(order_id=order_id, failed_step="authorize_payment"))
    assert plan is not None
    # every compensation, newest first: a step after the failed one may have run anyway
    assert [c.name for c in plan.compensations] == [
        "refund_payment",
        "cancel_shipment",
        "void_payment",
        "release_inventory",
    ]
    services.order.compensation_dispatched(order_id)
    assert services.order.plan_compensation(CompensateOrder(order_id=order_id, failed_step="authorize_payment")) is None
    if reason_first:
        services.order.record(_failure(order_id))
        assert services.order.status(order_id) == "PENDING"
        services.order.compensations_done(CancelOrder(order_id=order_id))
    else:
        services.order.compensations_done(CancelOrder(order_id=order_id))
        assert services.order.status(order_id) == "PENDING"
        services.order.record(_failure(order_id))
    view = services.order.view(order_id)
    assert (view.status, view.reason) == ("CANCELLED", "card_declined")
    assert log_types(services, "order") == ["OrderPlaced", "OrderCancelled"]


def test_a_reported_failure_is_compensated_only_when_borne_out(services: Services) -> None:
    """An error callback alone is not proof: the step may have succeeded (Celery reports a
    step failed when the broker is away as its next message is published)."""
    from app.domain.events import InventoryReserved, PaymentAuthorized
    from app.services.order import CONFIRMED, CONTRADICTED, UNCONFIRMED

    def review(order_id: str, step: str, reason: str | None = None) -> str:
        return services.order.review_failure(CompensateOrder(order_id=order_id, failed_step=step, reason=reason))

    order_id = place(services)
    assert review(order_id, "reserve_inventory", reason="operator") == CONFIRMED  # an operator says so
    services.order.record(Envelope.wrap(InventoryReserved(order_id=order_id, lines=[])))
    assert review(order_id, "reserve_inventory") == CONTRADICTED  # it succeeded
    assert services.order.deferred_compensation(order_id) is None
    services.order.record(Envelope.wrap(PaymentAuthorized(order_id=order_id, amount_cents=1, currency="EUR")))
    assert review(order_id, "schedule_shipping") == UNCONFIRMED  # nothing says so yet: kept
    assert services.order.deferred_compensation(order_id) is None  # no failure event yet
    services.order.record(_failure(order_id))
    due = services.order.deferred_compensation(order_id)  # the failure event confirms it
    assert due is not None and due.failed_step == "schedule_shipping"
    assert review(order_id, "schedule_shipping") == CONFIRMED
    assert services.order.plan_compensation(due) is not None
    assert services.order.deferred_compensation(order_id) is None  # under way: due once


def test_record_is_once_per_event(services: Services) -> None:
    order_id = place(services)
    env = _failure(order_id)
    assert services.order.record(env) is True
    assert services.order.record(env) is False
    assert [e.type for e in services.order.view(order_id).events] == ["OrderPlaced", "PaymentDeclined"]


# --- the sweeper's decisions ------------------------------------------------------------


def _overdue(svc: Services, order_id: str, age_seconds: float) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from app.persistence.db import utcnow
    from app.services.order import orders

    now = utcnow()
    svc.dbs["order"].run(
        lambda uow: uow.conn.execute(
            update(orders)
            .where(orders.c.order_id == order_id)
            .values(
                created_at=now - timedelta(seconds=age_seconds),
                updated_at=now - timedelta(seconds=age_seconds),  # no progress since
                deadline_at=now - timedelta(seconds=1),
            )
        )
    )


def test_a_saga_within_its_deadline_is_left_alone(services: Services) -> None:
    from datetime import timedelta

    order_id = place(services)
    assert services.order.overdue() == []
    assert services.order.plan_redrive(order_id, timedelta(seconds=900)) is None


def test_an_overdue_saga_resumes_after_its_done_steps(services: Services) -> None:
    from datetime import timedelta

    from app.domain.events import InventoryReserved

    order_id = place(services)
    services.order.record(Envelope.wrap(InventoryReserved(order_id=order_id, lines=(Line(sku="MUG-01", qty=2),))))
    _overdue(services, order_id, age_seconds=400)
    assert services.order.overdue() == [order_id]
    plan = services.order.plan_redrive(order_id, timedelta(seconds=900))
    assert plan is not None and plan.resume is not None and plan.compensation is None
    assert plan.done == {"reserve_inventory"}
    assert services.order.overdue() == []  # its deadline moved on
    assert services.order.plan_redrive(order_id, timedelta(seconds=900)) is None


def test_a_saga_past_the_give_up_limit_is_compensated(services: Services) -> None:
    from datetime import timedelta

    order_id = place(services)
    _overdue(services, order_id, age_seconds=1000)
    plan = services.order.plan_redrive(order_id, timedelta(seconds=900))
    assert plan is not None and plan.compensation is not None and plan.resume is None
    assert [c.name for c in plan.compensation.compensations] == [
        "refund_payment",
        "cancel_shipment",
        "void_payment",
        "release_inventory",
    ]
    services.order.compensations_done(CancelOrder(order_id=order_id))
    view = services.order.view(order_id)
    assert (view.status, view.reason) == ("CANCELLED", "deadline_exceeded")
