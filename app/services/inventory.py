"""Inventory: stock per SKU and the reservations held against it.

Stock moves between three buckets: ``available`` → ``reserved`` (reserve) →
``committed`` (the order completed), or back to ``available`` (release). ``initial`` is
what was seeded, so ``initial == available + reserved + committed`` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, insert, select, update

from app.domain.commands import ReleaseInventory, ReserveInventory
from app.domain.events import (
    Envelope,
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
)
from app.domain.states import StepOutcome
from app.domain.values import Line
from app.persistence.db import Database, StepRecord, UnitOfWork, utcnow
from app.persistence.tables import standard_tables
from app.services.steps import compensation, give_up, placed

SERVICE = "inventory"
metadata = MetaData()
tables = standard_tables(SERVICE, metadata)

stock = Table(
    "inventory_stock",
    metadata,
    Column("sku", String(32), primary_key=True),
    Column("initial", Integer, nullable=False),
    Column("available", Integer, nullable=False),
    Column("reserved", Integer, nullable=False),
    Column("committed", Integer, nullable=False),
)

reservations = Table(
    "inventory_reservations",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # RESERVED, RELEASED, COMMITTED
    Column("lines", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class OutOfStock(Exception):
    def __init__(self, sku: str) -> None:
        self.sku = sku
        super().__init__(sku)


@dataclass(frozen=True)
class StockLevel:
    sku: str
    initial: int
    available: int
    reserved: int
    committed: int


class InventoryService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def seed(self, levels: dict[str, int]) -> None:
        """Give each SKU its initial stock, unless it has some already."""

        def work(uow: UnitOfWork) -> None:
            have = set(uow.conn.execute(select(stock.c.sku)).scalars())
            for sku, qty in levels.items():
                if sku not in have:
                    uow.conn.execute(insert(stock).values(sku=sku, initial=qty, available=qty, reserved=0, committed=0))

        self.db.run(work)

    def levels(self) -> dict[str, StockLevel]:
        rows = self.db.query(lambda c: c.execute(select(stock)).all())
        return {r.sku: StockLevel(r.sku, r.initial, r.available, r.reserved, r.committed) for r in rows}

    # --- saga step ------------------------------------------------------------------

    def reserve(self, cmd: ReserveInventory, causation_id: str | None = None) -> StepRecord:
        """Reserve every line or none. Idempotent by (order, reserve_inventory)."""
        step = "reserve_inventory"

        def work(uow: UnitOfWork) -> StepRecord:
            recorded = uow.step(cmd.order_id, step)
            if recorded is not None:
                return recorded
            merged = _merge(cmd.lines)
            for line in merged:  # sorted by SKU, so concurrent reservations lock in one order
                moved = uow.conn.execute(
                    update(stock)
                    .where(stock.c.sku == line.sku, stock.c.available >= line.qty)
                    .values(available=stock.c.available - line.qty, reserved=stock.c.reserved + line.qty)
                ).rowcount
                if moved != 1:
                    raise OutOfStock(line.sku)
            uow.conn.execute(
                insert(reservations).values(
                    order_id=cmd.order_id,
                    status="RESERVED",
                    lines=[line.model_dump() for line in merged],
                    updated_at=utcnow(),
                )
            )
            uow.emit(InventoryReserved(order_id=cmd.order_id, lines=merged))
            return uow.record_step(cmd.order_id, step, StepRecord(StepOutcome.DONE))

        try:
            return self.db.run(work, causation_id=causation_id)
        except OutOfStock as exc:  # the partial moves were rolled back with the transaction
            short = exc.sku

            def record_failure(uow: UnitOfWork) -> StepRecord:
                recorded = uow.step(cmd.order_id, step)
                if recorded is not None:
                    return recorded
                uow.emit(InventoryReservationFailed(order_id=cmd.order_id, reason="out_of_stock", sku=short))
                return uow.record_step(
                    cmd.order_id, step, StepRecord(StepOutcome.FAILED, "out_of_stock", {"sku": short})
                )

            return self.db.run(record_failure, causation_id=causation_id)

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord:
        """A step's retries ran out: record the failure and say so."""
        failure = InventoryReservationFailed(order_id=order_id, reason=reason)
        return give_up(self.db, order_id, step, reason, failure, causation_id)

    # --- compensation ---------------------------------------------------------------

    def release(self, cmd: ReleaseInventory, causation_id: str | None = None, *, confirm: bool = False) -> StepRecord:
        """Give the order's reserved stock back. No-op if nothing was reserved (``confirm``:
        say so with an InventoryReleased of no lines)."""
        return compensation(
            self.db,
            cmd.order_id,
            forward="reserve_inventory",
            name="release_inventory",
            find=lambda uow: _reservation(uow, cmd.order_id, "RESERVED"),
            undo=lambda uow, lines: self._release(uow, cmd.order_id, lines),
            confirm=(lambda uow: uow.emit(InventoryReleased(order_id=cmd.order_id, lines=()))) if confirm else None,
            causation_id=causation_id,
        )

    # --- choreography: the same step and compensation, on events ---------------------

    def reserve_on_placed(self, env: Envelope) -> ReserveInventory:
        """An order was placed: reserve its lines."""
        return ReserveInventory(order_id=env.key, lines=placed(env).quantities())

    def undo(self, env: Envelope, causation_id: str | None = None) -> StepRecord:
        """A failure event or OrderCancelled: give the order's stock back, and say so even
        when nothing was reserved (the order is cancelled once every service has said so)."""
        return self.release(ReleaseInventory(order_id=env.key), causation_id, confirm=True)

    # --- reactions to order events --------------------------------------------------

    def on_order_completed(self, env: Envelope) -> bool:
        """Reserved stock becomes committed (shipped). Once per event."""

        def work(uow: UnitOfWork) -> bool:
            if not uow.first_time("inventory.commit", env.event_id):
                return False
            lines = _reservation(uow, env.key, "RESERVED")
            if lines is None:
                return False
            for line in lines:
                uow.conn.execute(
                    update(stock)
                    .where(stock.c.sku == line.sku)
                    .values(reserved=stock.c.reserved - line.qty, committed=stock.c.committed + line.qty)
                )
            _set_status(uow, env.key, "COMMITTED")
            uow.emit(InventoryCommitted(order_id=env.key, lines=tuple(lines)), correlation_id=env.correlation_id)
            return True

        return self.db.run(work, causation_id=env.event_id)

    def on_order_cancelled(self, env: Envelope) -> bool:
        """Release the reservation if a compensation has not already done so."""

        def work(uow: UnitOfWork) -> bool:
            return uow.first_time("inventory.release_on_cancel", env.event_id)

        if not self.db.run(work):
            return False
        record = self.release(ReleaseInventory(order_id=env.key), causation_id=env.event_id)
        return record.outcome == StepOutcome.DONE

    def _release(self, uow: UnitOfWork, order_id: str, lines: list[Line]) -> None:
        for line in lines:
            uow.conn.execute(
                update(stock)
                .where(stock.c.sku == line.sku)
                .values(available=stock.c.available + line.qty, reserved=stock.c.reserved - line.qty)
            )
        _set_status(uow, order_id, "RELEASED")
        uow.emit(InventoryReleased(order_id=order_id, lines=tuple(lines)))


def _merge(lines: tuple[Line, ...]) -> tuple[Line, ...]:
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.qty
    return tuple(Line(sku=sku, qty=qty) for sku, qty in sorted(totals.items()))


def _reservation(uow: UnitOfWork, order_id: str, status: str) -> list[Line] | None:
    row = uow.conn.execute(
        select(reservations.c.status, reservations.c.lines).where(reservations.c.order_id == order_id)
    ).first()
    if row is None or row.status != status:
        return None
    return [Line(**item) for item in row.lines]


def _set_status(uow: UnitOfWork, order_id: str, status: str) -> None:
    uow.conn.execute(
        update(reservations).where(reservations.c.order_id == order_id).values(status=status, updated_at=utcnow())
    )


def reservation_rows(db: Database) -> list[dict[str, Any]]:
    """Every reservation, for the auditor."""
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(select(reservations)).all())]
