"""The dead-letter store: messages that could not be handled, and why.

One store over both brokers. On RabbitMQ a rejected message also reaches the queue's
``<queue>.dlq`` through the broker's dead-letter exchange; on Redis (no DLX) this store is
the only copy. Either way each dead letter is a row in its service's
``<service>_dead_letters`` table, holding what an operator needs — queue, task, order,
reason, a traceback summary, attempts, first and last failure — and the message itself,
so it can be sent again (redriven) or purged. This module knows nothing of Celery: a
message is kept as the JSON the caller gives (``message``), and sending it again is the
caller's business (``app/operations/dlq.py``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from app.persistence.db import Database, UnitOfWork, as_utc, utcnow

DEAD, REDRIVEN, PURGED = "DEAD", "REDRIVEN", "PURGED"

#: Lines of traceback kept: enough to see where, not a wall of frames.
TRACEBACK_LINES = 12


@dataclass(frozen=True)
class DeadLetter:
    id: str
    service: str
    queue: str
    task: str | None
    order_id: str | None
    reason: str
    error: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    status: str
    message: dict[str, Any]
    message_key: str


def storable_text(text: str) -> str:
    """``text`` as every database takes it: PostgreSQL's text refuses NUL characters, and
    a malformed message can put them anywhere (a field name in the reason, say)."""
    return text.replace("\x00", "\\x00")


def storable_json(value: Any) -> Any:
    """``value`` as every JSON column takes it: no NaN or infinity (PostgreSQL's json
    refuses them), no int too long to print, no NUL in a string or key."""
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable_json(v) for v in value]
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return f"<int of {value.bit_length()} bits>"
    return value


def summarize_traceback(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= TRACEBACK_LINES:
        return "\n".join(lines)
    return "\n".join(["...", *lines[-TRACEBACK_LINES:]])


class DeadLetterStore:
    def __init__(self, databases: Mapping[str, Database]) -> None:
        self.databases = databases

    def record(
        self,
        service: str,
        *,
        message_key: str,
        queue: str,
        task: str | None,
        order_id: str | None,
        reason: str,
        error: str,
        traceback: str,
        attempts: int,
        message: dict[str, Any],
        first_failed_at: datetime | None = None,
        merge: bool = True,
    ) -> str:
        """Keep a dead letter and return its id. With ``merge`` (a key that identifies one
        message, like a task id), the same message dying again updates its row instead."""
        db = self.databases[service]
        table = db.tables.dead_letters
        now = utcnow()
        # what a malformed message names may be any text: keep it storable and within its column
        message_key = storable_text(message_key)[:255]
        task = storable_text(task)[:128] if task is not None else None
        order_id = storable_text(order_id)[:64] if order_id is not None else None

        def work(uow: UnitOfWork) -> str:
            existing = (
                uow.conn.execute(
                    select(table.c.id, table.c.attempts).where(
                        table.c.message_key == message_key, table.c.status == DEAD
                    )
                ).first()
                if merge
                else None
            )
            values = {
                "reason": storable_text(reason)[:255],
                "error": storable_text(error),
                "traceback": storable_text(summarize_traceback(traceback)),
                "last_failed_at": now,
                "message": storable_json(message),
            }
            if existing is not None:
                uow.conn.execute(
                    update(table)
                    .where(table.c.id == existing.id)
                    .values(**values, attempts=existing.attempts + attempts)
                )
                return str(existing.id)
            new_id = str(uuid.uuid4())
            uow.conn.execute(
                insert(table).values(
                    id=new_id,
                    message_key=message_key,
                    queue=queue,
                    task=task,
                    order_id=order_id,
                    attempts=attempts,
                    first_failed_at=first_failed_at or now,
                    status=DEAD,
                    **values,
                )
            )
            return new_id

        return db.run(work)

    def find(self, *, status: str | None = DEAD, order_id: str | None = None) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        for service, db in self.databases.items():
            table = db.tables.dead_letters
            query = select(table)
            if status is not None:
                query = query.where(table.c.status == status)
            if order_id is not None:
                query = query.where(table.c.order_id == order_id)
            rows: list[Any] = db.query(lambda c, q=query: list(c.execute(q).all()))  # type: ignore[misc]
            found.extend(_row(service, r) for r in rows)
        return sorted(found, key=lambda d: (d.first_failed_at, d.id))

    def keys(self, service: str, *, status: str = DEAD) -> set[str]:
        """The message keys of one service's dead letters in ``status`` (no message is loaded)."""
        db = self.databases[service]
        table = db.tables.dead_letters
        query = select(table.c.message_key).where(table.c.status == status)
        return set(db.query(lambda c: c.execute(query).scalars().all()))

    def counts(self) -> dict[tuple[str, str], int]:
        """(service, status) -> how many dead letters (for metrics; no message is loaded)."""
        found: dict[tuple[str, str], int] = {}
        for service, db in self.databases.items():
            table = db.tables.dead_letters
            query = select(table.c.status, func.count()).group_by(table.c.status)
            rows: list[Any] = db.query(lambda c, q=query: list(c.execute(q).all()))  # type: ignore[misc]
            for status, count in rows:
                found[(service, str(status))] = int(count)
        return found

    def get(self, id_or_prefix: str) -> DeadLetter:
        """One dead letter by id, or by an unambiguous prefix of it (as ``list`` shows)."""
        matches = [d for d in self.find(status=None) if d.id.startswith(id_or_prefix)]
        if not matches:
            raise KeyError(f"no dead letter with id {id_or_prefix!r} (see `python -m app dlq list`)")
        if len(matches) > 1:
            raise KeyError(f"{len(matches)} dead letters start with {id_or_prefix!r}; give more of the id")
        return matches[0]

    def set_status(self, letter: DeadLetter, status: str, *, only_if: str | None = None) -> bool:
        """Change a letter's status; with ``only_if``, only from that status (returns whether
        it changed), so two operators cannot redrive one letter twice."""
        db = self.databases[letter.service]
        table = db.tables.dead_letters

        def work(uow: UnitOfWork) -> bool:
            query = update(table).where(table.c.id == letter.id)
            if only_if is not None:
                query = query.where(table.c.status == only_if)
            return bool(uow.conn.execute(query.values(status=status)).rowcount)

        return db.run(work)


def _row(service: str, row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        service=service,
        queue=row.queue,
        task=row.task,
        order_id=row.order_id,
        reason=row.reason,
        error=row.error,
        traceback=row.traceback,
        attempts=row.attempts,
        first_failed_at=as_utc(row.first_failed_at),
        last_failed_at=as_utc(row.last_failed_at),
        status=row.status,
        message=dict(row.message),
        message_key=row.message_key,
    )
