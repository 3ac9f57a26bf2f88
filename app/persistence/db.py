"""Persistence plumbing shared by the services: engines, the unit of work, the outbox.

Each service owns a :class:`sqlalchemy.MetaData` of its own tables plus the standard ones
(:mod:`app.persistence.tables`: its event log, which is also its outbox, its inbox, its
step records and its dead letters). :class:`Database` runs work on them in transactions
(:class:`UnitOfWork`), retried on a lost connection or a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    MetaData,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.domain.events import Envelope, Event
from app.domain.states import SUCCEEDED, StepOutcome
from app.persistence import attempts, migrations, tracecontext
from app.persistence.retry import CONTENTION_ATTEMPTS, is_contention, is_disconnect, pause, why
from app.persistence.tables import StandardTables

__all__ = ["CONTENTION_ATTEMPTS", "Database", "StepRecord", "UnitOfWork", "is_contention"]

log = logging.getLogger("checkout.db")

T = TypeVar("T")

#: Execution option marking a connection that only reads (SQLite then skips the write lock).
READ_ONLY = "checkout_read_only"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def make_engine(url: str) -> Engine:
    """An engine fit for many threads and processes writing at once.

    SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` (a writer takes the lock up
    front instead of failing when it upgrades a read lock).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # No pre-ping (it costs a round trip per checkout): a dropped connection fails one
        # transaction, SQLAlchemy invalidates the pool, and the step is retried as transient.
        return create_engine(url, pool_size=5, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # readers share the database with writers (WAL); writers lock up front
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


@dataclass(frozen=True)
class StepRecord:
    """What a step or compensation did the first time it ran.

    ``outcome`` is ``done`` (it took effect), ``failed`` (a business failure, ``reason``
    set), ``noop`` (a compensation with nothing to undo) or ``prevented`` (the step was
    compensated before it ran, so it must never take effect).
    """

    outcome: StepOutcome
    reason: str | None = None
    detail: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome in SUCCEEDED


class UnitOfWork:
    """One transaction in one service's database, plus the events it produced."""

    def __init__(
        self, conn: Connection, tables: StandardTables, causation_id: str | None, emit_versions: Mapping[str, int]
    ) -> None:
        self.conn = conn
        self.tables = tables
        self.causation_id = causation_id
        self.emit_versions = emit_versions  # see Database
        self.new_events: list[Envelope] = []
        #: the work is done and the commit under way (a connection lost now: outcome unknown)
        self.committing = False

    def emit(self, evt: Event, *, correlation_id: str | None = None) -> Envelope:
        """Append an event to the service's log, published once the transaction commits; with the
        step's attempts and time so far (:func:`app.persistence.attempts.attempt`) and the trace context."""
        now = utcnow()
        current = attempts.current()
        env = Envelope.wrap(
            evt,
            correlation_id=correlation_id,
            causation_id=self.causation_id,
            occurred_at=now,
            attempts=current.number if current is not None else None,
            duration_ms=current.duration_ms(now) if current is not None else None,
            traceparent=tracecontext.current(),
            version=self.emit_versions.get(evt.TYPE),
        )
        self.conn.execute(
            insert(self.tables.events).values(
                event_id=env.event_id,
                event_type=env.event_type,
                version=env.version,
                topic=env.topic,
                key=env.key,
                correlation_id=env.correlation_id,
                causation_id=env.causation_id,
                occurred_at=env.occurred_at,
                payload=env.payload,
                attempts=env.attempts,
                duration_ms=env.duration_ms,
                traceparent=env.traceparent,
            )
        )
        self.new_events.append(env)
        return env

    def step(self, order_id: str, step: str) -> StepRecord | None:
        row = self.conn.execute(
            select(self.tables.steps.c.outcome, self.tables.steps.c.detail).where(
                self.tables.steps.c.order_id == order_id, self.tables.steps.c.step == step
            )
        ).first()
        if row is None:
            return None
        detail = dict(row.detail or {})
        return StepRecord(StepOutcome(row.outcome), detail.pop("reason", None), detail)

    def record_step(self, order_id: str, step: str, record: StepRecord) -> StepRecord:
        """Record a step's outcome. A concurrent duplicate makes the commit fail with
        ``IntegrityError``; :meth:`Database.run` then runs the work again, and it finds
        this record."""
        detail = dict(record.detail or {})
        if record.reason:
            detail["reason"] = record.reason
        # the attempts of the step being run, not of another step it records (a compensation
        # records the step it undoes as prevented)
        current = attempts.current()
        if current is not None and current.step != step:
            current = None
        self.conn.execute(
            insert(self.tables.steps).values(
                order_id=order_id,
                step=step,
                outcome=record.outcome,
                detail=detail,
                recorded_at=utcnow(),
                attempts=current.number if current is not None else None,
                started_at=current.started_at if current is not None else None,
            )
        )
        return record

    def first_time(self, consumer: str, event_id: str) -> bool:
        """True when ``consumer`` has not handled ``event_id`` yet; marks it handled."""
        inbox = self.tables.inbox
        seen = self.conn.execute(
            select(inbox.c.event_id).where(inbox.c.consumer == consumer, inbox.c.event_id == event_id)
        ).first()
        if seen is not None:
            return False
        self.conn.execute(insert(inbox).values(consumer=consumer, event_id=event_id, handled_at=utcnow()))
        return True


@dataclass(frozen=True)
class StepStats:
    """How often a step (or compensation) ended with an outcome in one service, and how many
    retries those took (attempts beyond the first, where the attempts are known)."""

    step: str
    outcome: str
    count: int
    retries: int


CommitHook = Callable[[str, list[Envelope]], None]


class Database:
    """One service's database: its engine, its tables, and how its transactions run."""

    def __init__(
        self,
        service: str,
        engine: Engine,
        metadata: MetaData,
        tables: StandardTables,
        *,
        migrated: bool = True,
        emit_versions: Mapping[str, int] | None = None,
    ) -> None:
        self.service = service
        self.engine = engine
        self.metadata = metadata
        self.tables = tables
        #: event type -> the earlier version to write it as (CHECKOUT_EMIT_VERSIONS, Envelope.wrap)
        self.emit_versions: Mapping[str, int] = emit_versions or {}
        #: False: no Alembic line of its own (an extension's tables): created where missing
        self.migrated = migrated
        self._after_commit: list[CommitHook] = []
        self._schema_lock = threading.Lock()

    def after_commit(self, hook: CommitHook) -> None:
        """Call ``hook(service, events)`` after every transaction that emitted events."""
        self._after_commit.append(hook)

    @contextmanager
    def unit_of_work(self, causation_id: str | None = None) -> Iterator[UnitOfWork]:
        with self.engine.connect() as conn:
            with conn.begin():
                uow = UnitOfWork(conn, self.tables, causation_id, self.emit_versions)
                yield uow
                uow.committing = True
        if uow.new_events:
            for hook in self._after_commit:
                hook(self.service, uow.new_events)

    def run(
        self, work: Callable[[UnitOfWork], T], *, causation_id: str | None = None, attempts: int = CONTENTION_ATTEMPTS
    ) -> T:
        """Run ``work`` in one transaction; on a duplicate-key race, run it again.

        The second run sees what the winner committed, which is how a step delivered twice
        at once still takes effect once. A transaction that left nothing behind — the
        database gave up on it for contention (a PostgreSQL serialization failure or
        deadlock, SQLite busy), or its connection was lost before the commit (see
        :mod:`app.persistence.retry`) — is run again after a short random pause that grows
        with each attempt; past ``attempts`` the error is raised, and a task retries it
        with backoff like any transient fault.
        """
        for attempt in range(1, attempts + 1):
            uow: UnitOfWork | None = None
            try:
                with self.unit_of_work(causation_id) as uow:
                    return work(uow)
            except IntegrityError:
                if attempt == attempts:
                    raise
            except DBAPIError as exc:
                lost = is_disconnect(exc) and uow is not None and not uow.committing
                if attempt == attempts or not (lost or is_contention(exc)):
                    raise
                log.info("%s: transaction run again after %s (attempt %d)", self.service, why(exc), attempt)
                time.sleep(pause(attempt))
        raise AssertionError("unreachable")

    def query(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a read-only transaction; again on a new connection if the one it
        had turned out to be lost (a database restarted since it was pooled), and again
        after a short pause if the database gave up on it for contention (a read, too, can
        be the one a serializable database cancels)."""
        for attempt in range(1, CONTENTION_ATTEMPTS + 1):
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(**{READ_ONLY: True})
                    with conn.begin():
                        return work(conn)
            except DBAPIError as exc:
                if is_disconnect(exc) and attempt == 1:
                    continue
                if attempt == CONTENTION_ATTEMPTS or not is_contention(exc):
                    raise
                log.info("%s: read run again after %s (attempt %d)", self.service, why(exc), attempt)
                time.sleep(pause(attempt))
        raise AssertionError("unreachable")

    def create_schema(self) -> None:
        """Make sure this service's tables are there, as the code expects them. Safe from many
        processes at once.

        On an empty database, create them and record the migrations' head (the same schema:
        see :mod:`app.persistence.migrations`). On a database under migrations, change nothing: refuse
        (:class:`app.persistence.migrations.SchemaNotCurrent`, naming ``python -m app db upgrade``) unless
        it is at the head. On one from before migrations, create missing tables and add
        columns a newer version added (nullable or defaulted ones; anything else is refused
        with what to do)."""
        with self._schema_lock, self.engine.connect() as conn:
            with conn.begin():
                migrations.lock(conn)
                if not self.migrated:
                    self.metadata.create_all(conn, checkfirst=True)
                    migrations.add_missing_columns(conn, self.metadata)
                    return
                found = migrations.state(conn, self.service, self.metadata)
                if found == migrations.MANAGED:
                    migrations.check_current(conn, self.service, self.metadata)
                    return
                self.metadata.create_all(conn, checkfirst=True)
                if found == migrations.FRESH:
                    migrations.stamp(conn, self.service, migrations.head(self.service))
                else:
                    migrations.add_missing_columns(conn, self.metadata)

    def unpublished(self, older_than_seconds: float, limit: int = 500) -> list[Envelope]:
        events = self.tables.events
        cutoff = utcnow().timestamp() - older_than_seconds
        rows = self.query(
            lambda c: c.execute(
                select(events).where(events.c.published_at.is_(None)).order_by(events.c.seq).limit(limit)
            ).all()
        )
        return [row_to_envelope(r) for r in rows if as_utc(r.occurred_at).timestamp() <= cutoff]

    def mark_published(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        events = self.tables.events

        def mark(uow: UnitOfWork) -> None:
            uow.conn.execute(update(events).where(events.c.event_id.in_(event_ids)).values(published_at=utcnow()))

        self.run(mark)

    def step_stats(self) -> list[StepStats]:
        """Every (step, outcome) this service recorded, with counts and retries (for metrics)."""
        steps = self.tables.steps
        query = select(
            steps.c.step, steps.c.outcome, func.count(), func.coalesce(func.sum(steps.c.attempts - 1), 0)
        ).group_by(steps.c.step, steps.c.outcome)
        rows = self.query(lambda c: c.execute(query).all())
        return [StepStats(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def handled(self, consumer: str, event_ids: list[str]) -> set[str]:
        """Which of the events the consumer's inbox (in this database) holds."""
        if not event_ids:
            return set()
        inbox = self.tables.inbox
        query = select(inbox.c.event_id).where(inbox.c.consumer == consumer, inbox.c.event_id.in_(event_ids))
        return set(self.query(lambda c: c.execute(query).scalars().all()))

    def recorded_steps(self, order_id: str) -> set[str]:
        """The saga steps and compensations this service has recorded for the order."""
        steps = self.tables.steps
        query = select(steps.c.step).where(steps.c.order_id == order_id)
        return set(self.query(lambda c: c.execute(query).scalars().all()))

    def log(self, order_id: str | None = None) -> list[Envelope]:
        """The service's event log, oldest first (one order's part of it, if given)."""
        events = self.tables.events
        query = select(events).order_by(events.c.seq)
        if order_id is not None:
            query = query.where(events.c.key == order_id)
        return [row_to_envelope(r) for r in self.query(lambda c: c.execute(query).all())]


def row_to_envelope(row: Any) -> Envelope:
    return Envelope(
        event_id=row.event_id,
        event_type=row.event_type,
        version=row.version,
        topic=row.topic,
        occurred_at=as_utc(row.occurred_at),
        key=row.key,
        correlation_id=row.correlation_id,
        causation_id=row.causation_id,
        payload=row.payload,
        attempts=getattr(row, "attempts", None),
        duration_ms=getattr(row, "duration_ms", None),
        traceparent=getattr(row, "traceparent", None),
    )
