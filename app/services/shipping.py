"""Shipping: books a shipment with a :class:`Carrier`, or cancels it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, insert, select, update

from app.commands import CancelShipment, ScheduleShipment
from app.db import Database, StepRecord, UnitOfWork, standard_tables, utcnow
from app.errors import BusinessFailure
from app.events import ShipmentCancelled, ShipmentFailed, ShipmentScheduled
from app.ports import Carrier
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
            call=lambda: self.carrier.schedule(cmd.ship_to, cmd.lines, idempotency_key=f"{oid}:schedule"),
            on_success=on_success,
            on_failure=on_failure,
            undo=lambda ref: self.carrier.cancel(ref, idempotency_key=f"{oid}:cancel"),
            causation_id=causation_id,
        )

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord:
        """A step's retries ran out: record the failure and say so with ShipmentFailed."""
        return give_up(self.db, order_id, step, reason, ShipmentFailed(order_id=order_id, reason=reason), causation_id)

    def cancel(self, cmd: CancelShipment, causation_id: str | None = None) -> StepRecord:
        """Cancel a booked shipment. No-op if none was booked."""
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
            external=lambda ref: self.carrier.cancel(ref, idempotency_key=f"{oid}:cancel"),
            undo=undo,
            causation_id=causation_id,
        )


def shipment_rows(db: Database) -> list[dict[str, Any]]:
    """Every shipment, for the auditor."""
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(select(shipments)).all())]
