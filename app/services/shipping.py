"""Shipping: books a shipment with a :class:`Carrier`, or cancels it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, MetaData, String, Table, insert, select, update

from app.domain.commands import CancelShipment, ScheduleShipment
from app.domain.errors import BusinessFailure
from app.domain.events import Envelope, OrderPlaced, ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from app.domain.ports import Carrier
from app.persistence.db import Database, StepRecord, UnitOfWork, utcnow
from app.persistence.tables import standard_tables
from app.services.steps import compensation, forward_step_with_call, give_up

SERVICE = "shipping"
metadata = MetaData()
tables = standard_tables(SERVICE, metadata)

shipments = Table(
    "shipping_shipments",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # SCHEDULED, CANCELLED
    Column("country", String(2), nullable=False),
    Column("tracking_ref", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


#: Choreography's durable join: shipping books a shipment once it has seen the order
#: (address and lines), its stock reserved and its payment authorized — in any order, each
#: possibly more than once.
readiness = Table(
    "shipping_readiness",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("ship_to", JSON),  # from OrderPlaced
    Column("lines", JSON),  # from OrderPlaced
    Column("stock_reserved", Boolean, nullable=False),  # InventoryReserved seen
    Column("payment_authorized", Boolean, nullable=False),  # PaymentAuthorized seen
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: What each event tells the join.
_JOINS = {"InventoryReserved": "stock_reserved", "PaymentAuthorized": "payment_authorized"}


class ShippingService:
    def __init__(self, db: Database, carrier: Carrier) -> None:
        self.db = db
        self.carrier = carrier

    def schedule(self, cmd: ScheduleShipment, causation_id: str | None = None) -> StepRecord:
        """Book the shipment. Idempotent by (order, schedule_shipping)."""
        oid = cmd.order_id

        def on_success(uow: UnitOfWork, tracking_ref: str) -> dict[str, object]:
            uow.conn.execute(
                insert(shipments).values(
                    order_id=oid,
                    status="SCHEDULED",
                    country=cmd.ship_to.country,
                    tracking_ref=tracking_ref,
                    updated_at=utcnow(),
                )
            )
            uow.emit(ShipmentScheduled(order_id=oid, tracking_ref=tracking_ref, country=cmd.ship_to.country))
            return {"tracking_ref": tracking_ref}

        def on_failure(uow: UnitOfWork, failure: BusinessFailure) -> None:
            uow.emit(ShipmentFailed(order_id=oid, reason=failure.reason))

        return forward_step_with_call(
            self.db,
            oid,
            "schedule_shipping",
            call=lambda: self.carrier.schedule(
                cmd.ship_to, cmd.lines, idempotency_key=f"{oid}:schedule", reference=oid
            ),
            on_success=on_success,
            on_failure=on_failure,
            undo=lambda ref: self.carrier.cancel(ref, idempotency_key=f"{oid}:cancel", reference=oid),
            find=lambda: self.carrier.find(f"{oid}:schedule"),
            causation_id=causation_id,
        )

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord:
        """A step's retries ran out: record the failure and say so with ShipmentFailed."""
        return give_up(self.db, order_id, step, reason, ShipmentFailed(order_id=order_id, reason=reason), causation_id)

    def cancel(self, cmd: CancelShipment, causation_id: str | None = None, *, confirm: bool = False) -> StepRecord:
        """Cancel a booked shipment. No-op if none was booked (``confirm``: say so with a
        ShipmentCancelled all the same)."""
        oid = cmd.order_id

        def find(uow: UnitOfWork) -> str | None:
            row = uow.conn.execute(
                select(shipments.c.status, shipments.c.tracking_ref).where(shipments.c.order_id == oid)
            ).first()
            return row.tracking_ref if row is not None and row.status == "SCHEDULED" else None

        def undo(uow: UnitOfWork, _ref: str) -> None:
            uow.conn.execute(
                update(shipments).where(shipments.c.order_id == oid).values(status="CANCELLED", updated_at=utcnow())
            )
            uow.emit(ShipmentCancelled(order_id=oid))

        return compensation(
            self.db,
            oid,
            forward="schedule_shipping",
            name="cancel_shipment",
            find=find,
            external=lambda ref: self.carrier.cancel(ref, idempotency_key=f"{oid}:cancel", reference=oid),
            undo=undo,
            confirm=(lambda uow: uow.emit(ShipmentCancelled(order_id=oid))) if confirm else None,
            causation_id=causation_id,
        )

    def join(self, env: Envelope) -> ScheduleShipment | None:
        """Choreography: note what ``env`` says about the order; once the order, its stock
        and its payment are all in, the shipment to book (every time after that, too: booking
        is idempotent, so a redelivery or a retry after a failed booking books it once)."""
        if env.event_type != "OrderPlaced" and env.event_type not in _JOINS:
            raise ValueError(f"shipping does not join on {env.event_type}")
        oid = env.key

        def work(uow: UnitOfWork) -> ScheduleShipment | None:
            row = uow.conn.execute(select(readiness).where(readiness.c.order_id == oid).with_for_update()).first()
            if row is None:  # the first of the three: a concurrent first one makes this retry
                uow.conn.execute(
                    insert(readiness).values(
                        order_id=oid, stock_reserved=False, payment_authorized=False, updated_at=utcnow()
                    )
                )
                row = uow.conn.execute(select(readiness).where(readiness.c.order_id == oid).with_for_update()).one()
            values: dict[str, Any] = {}
            if env.event_type == "OrderPlaced":
                placed = env.open()
                assert isinstance(placed, OrderPlaced)
                if row.ship_to is None:
                    values.update(
                        ship_to=placed.ship_to.model_dump(mode="json"),
                        lines=[line.model_dump(mode="json") for line in placed.quantities()],
                    )
            elif not getattr(row, _JOINS[env.event_type]):
                values[_JOINS[env.event_type]] = True
            if values:
                values["updated_at"] = utcnow()
                uow.conn.execute(update(readiness).where(readiness.c.order_id == oid).values(**values))
            merged = {**row._mapping, **values}
            if merged["ship_to"] is None or not (merged["stock_reserved"] and merged["payment_authorized"]):
                return None
            return ScheduleShipment(order_id=oid, ship_to=merged["ship_to"], lines=merged["lines"])

        return self.db.run(work)

    def undo(self, env: Envelope, causation_id: str | None = None) -> StepRecord:
        """A failure event or OrderCancelled: cancel the order's shipment, and say so even
        when none was booked (the order is cancelled once every service has said so)."""
        return self.cancel(CancelShipment(order_id=env.key), causation_id, confirm=True)


def shipment_rows(db: Database) -> list[dict[str, Any]]:
    """Every shipment, for the auditor."""
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(select(shipments)).all())]
