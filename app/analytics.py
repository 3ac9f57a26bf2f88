"""Sales analytics: an extension that follows how orders end, and sums them up by day.

It subscribes to ``OrderCompleted`` and ``OrderCancelled`` (``CHECKOUT_EXTENSIONS=analytics``),
keeps one row per ended order in ``analytics_orders``, and answers "how did each day go":
orders completed and their revenue per currency, orders cancelled and why
(``python -m app analytics``). Days are UTC days of when the order ended.

It changes nothing in the services and is fed the way any extension is (see
:mod:`app.extensions`): live by the relay, and history by replay.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, select

from app.domain.events import Envelope, OrderCancelled, OrderCompleted
from app.extensions import Extension
from app.persistence.db import Database, UnitOfWork, utcnow
from app.persistence.tables import standard_tables

NAME = "analytics"
COMPLETED, CANCELLED = "completed", "cancelled"

log = logging.getLogger("checkout.analytics")

metadata = MetaData()
tables = standard_tables(NAME, metadata)

#: One row per order that ended, as its end event told it.
ended = Table(
    "analytics_orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("outcome", String(16), nullable=False),  # completed, cancelled
    Column("reason", String(32)),  # why it was cancelled
    Column("total_cents", Integer),  # what a completed order took
    Column("currency", String(3)),
    Column("day", String(10), nullable=False, index=True),  # UTC day it ended, YYYY-MM-DD
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)


def _record(uow: UnitOfWork, env: Envelope, outcome: str, **values: object) -> None:
    found = uow.conn.execute(select(ended.c.outcome).where(ended.c.order_id == env.key)).first()
    if found is not None:  # an order ends once; a second, different end is the services' bug
        if found.outcome != outcome:
            log.warning("order %s ended %s already; ignoring %s", env.key, found.outcome, env.event_type)
        return
    uow.conn.execute(
        insert(ended).values(
            order_id=env.key,
            outcome=outcome,
            day=env.occurred_at.date().isoformat(),
            ended_at=env.occurred_at,
            recorded_at=utcnow(),
            **values,
        )
    )


def on_completed(uow: UnitOfWork, env: Envelope) -> None:
    evt = env.open()
    assert isinstance(evt, OrderCompleted)
    _record(uow, env, COMPLETED, total_cents=evt.total_cents, currency=evt.currency)


def on_cancelled(uow: UnitOfWork, env: Envelope) -> None:
    evt = env.open()
    assert isinstance(evt, OrderCancelled)
    _record(uow, env, CANCELLED, reason=evt.reason)


extension = Extension(
    NAME,
    metadata,
    tables,
    {"OrderCompleted": on_completed, "OrderCancelled": on_cancelled},
    migrated=True,
)


@dataclass
class DaySales:
    """How one UTC day went."""

    day: str
    completed: int = 0
    cancelled: int = 0
    revenue_cents: Counter[str] = field(default_factory=Counter)  # per currency
    reasons: Counter[str] = field(default_factory=Counter)  # cancellations by reason

    @property
    def ended(self) -> int:
        return self.completed + self.cancelled

    def as_json(self) -> dict[str, object]:
        """As ``python -m app analytics --json`` prints it (amounts in minor units)."""
        return {
            "day": self.day,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "revenue_cents": dict(sorted(self.revenue_cents.items())),
            "cancelled_by_reason": dict(sorted(self.reasons.items())),
        }


def sales_by_day(db: Database, since: date | None = None) -> list[DaySales]:
    """Each day with an ended order, oldest first (from ``since`` on, if given)."""
    query = select(
        ended.c.day, ended.c.outcome, ended.c.currency, ended.c.reason, func.count(), func.sum(ended.c.total_cents)
    )
    if since is not None:
        query = query.where(ended.c.day >= since.isoformat())
    query = query.group_by(ended.c.day, ended.c.outcome, ended.c.currency, ended.c.reason)
    days: dict[str, DaySales] = {}
    for day, outcome, currency, reason, count, cents in db.query(lambda c: c.execute(query).all()):
        sales = days.setdefault(day, DaySales(day))
        if outcome == COMPLETED:
            sales.completed += count
            sales.revenue_cents[currency] += int(cents or 0)
        else:
            sales.cancelled += count
            sales.reasons[reason] += count
    return [days[day] for day in sorted(days)]
