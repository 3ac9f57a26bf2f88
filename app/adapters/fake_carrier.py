"""A deterministic carrier: delivers everywhere but Antarctica (``AQ``).

Like a real carrier it keeps books of its own — here a table in the database it is given —
so a booking is made once per idempotency key across processes, an earlier booking can be
found by its key, and the auditor can count what the carrier actually did.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, insert, select

from app.adapters import first_call_wins
from app.domain.errors import BusinessFailure
from app.domain.ports import Carrier
from app.domain.values import Address, Line
from app.persistence.db import utcnow

UNSERVED_COUNTRIES = frozenset({"AQ"})

metadata = MetaData()

bookings = Table(
    "fakecarrier_bookings",
    metadata,
    Column("idempotency_key", String(128), primary_key=True),
    Column("operation", String(16), nullable=False),  # schedule, cancel
    Column("reference", String(64), nullable=False, index=True),  # the order
    Column("tracking_ref", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class FakeCarrier(Carrier):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine, checkfirst=True)

    def schedule(self, address: Address, lines: tuple[Line, ...], *, idempotency_key: str, reference: str) -> str:
        if address.country in UNSERVED_COUNTRIES:
            raise BusinessFailure("shipping_unavailable", f"no carrier delivers to {address.country}")
        tracking_ref = "TRK-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:12].upper()
        return self._book("schedule", idempotency_key, reference, tracking_ref)

    def cancel(self, tracking_ref: str, *, idempotency_key: str, reference: str) -> None:
        self._book("cancel", idempotency_key, reference, tracking_ref)

    def find(self, idempotency_key: str) -> str | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(bookings.c.tracking_ref).where(bookings.c.idempotency_key == idempotency_key)
            ).scalar()
        return None if found is None else str(found)

    def _book(self, operation: str, key: str, reference: str, tracking_ref: str) -> str:
        def attempt() -> str:
            with self.engine.begin() as conn:
                row = conn.execute(select(bookings.c.tracking_ref).where(bookings.c.idempotency_key == key)).first()
                if row is not None:
                    return str(row.tracking_ref)
                conn.execute(
                    insert(bookings).values(
                        idempotency_key=key,
                        operation=operation,
                        reference=reference,
                        tracking_ref=tracking_ref,
                        updated_at=utcnow(),
                    )
                )
                return tracking_ref

        return first_call_wins(attempt, "shipping_unavailable", "carrier books contention")
