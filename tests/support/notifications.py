"""Customer notifications: an extension the system does not ship, added by a test the way a
user adds one (``CHECKOUT_EXTENSIONS=notifications=tests.support.notifications:extension``).

It writes the message each customer would get when an order ends, into its own table, for a
mailer to send. Its table has no unique key per order: that each ended order gets one
message, however often its event arrives, is the inbox's doing. It imports what it needs as
extensions written before the package took its layers do (``app.db``, ``app.events``): those
paths stay.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, select

from app.db import Database, UnitOfWork, standard_tables, utcnow
from app.events import Envelope, OrderCancelled
from app.extensions import Extension

metadata = MetaData()
tables = standard_tables("notifications", metadata)

messages = Table(
    "notifications_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("text", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def _write(uow: UnitOfWork, env: Envelope, kind: str, text: str) -> None:
    uow.conn.execute(insert(messages).values(order_id=env.key, kind=kind, text=text, created_at=utcnow()))


def on_completed(uow: UnitOfWork, env: Envelope) -> None:
    _write(uow, env, "completed", f"Your order {env.key[:8]} is on its way.")


def on_cancelled(uow: UnitOfWork, env: Envelope) -> None:
    evt = env.open()
    assert isinstance(evt, OrderCancelled)
    _write(uow, env, "cancelled", f"Your order {env.key[:8]} was cancelled ({evt.reason}).")


extension = Extension(
    "notifications", metadata, tables, {"OrderCompleted": on_completed, "OrderCancelled": on_cancelled}
)


def sent(db: Database) -> dict[str, list[str]]:
    """Order id -> the kinds of message written for it (one each, if all is well)."""
    rows = db.query(lambda c: c.execute(select(messages.c.order_id, messages.c.kind).order_by(messages.c.id)).all())
    found: dict[str, list[str]] = {}
    for order_id, kind in rows:
        found.setdefault(order_id, []).append(kind)
    return found


def count(db: Database) -> int:
    return int(db.query(lambda c: c.execute(select(func.count()).select_from(messages)).scalar_one()))
