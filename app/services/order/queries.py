"""The order service's read side: views of an order and its story, lists, counts and
durations (for the CLI, metrics and admission control), and the sweeper's questions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select

from app.domain.admission import Load
from app.domain.errors import IdempotencyKeyReused, OrderNotFound
from app.domain.saga import Saga
from app.domain.states import TERMINAL, OrderStatus, StepOutcome
from app.domain.values import Address, Line
from app.persistence.db import Database, as_utc, utcnow
from app.services.order.projection import known_step
from app.services.order.tables import (
    ORDER_SUMMARY,
    OrderStore,
    admission,
    catalog,
    order_lines,
    orders,
    timeline,
)


@dataclass(frozen=True)
class TimelineEntry:
    """One event of an order's story, and what it says about a step of its saga."""

    type: str
    service: str
    time: datetime
    step: str | None = None  # the saga step or compensation it reports, if any
    outcome: StepOutcome | None = None  # done, failed
    compensation: bool = False  # the step undoes another (release_inventory, void_payment ...)
    attempts: int | None = None  # how many attempts the step took (None: not known)
    duration_seconds: float | None = None  # from the step's first attempt's start to this event


@dataclass(frozen=True)
class OrderView:
    """What a caller sees of an order."""

    order_id: str
    customer_id: str
    status: OrderStatus
    reason: str | None
    attention: str | None
    total_cents: int
    currency: str
    lines: tuple[Line, ...]
    ship_to: Address
    steps: dict[str, StepOutcome]
    events: tuple[TimelineEntry, ...]
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    finished_at: datetime | None
    #: the version of the saga definition the order started under, and follows
    saga_version: int = 1

    @property
    def duration_seconds(self) -> float | None:
        """From placement to COMPLETED or CANCELLED."""
        return None if self.finished_at is None else (self.finished_at - self.created_at).total_seconds()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class SagaCounts:
    """How many orders there are, by where their sagas stand (for metrics)."""

    placed: int
    started: int  # sagas dispatched
    by_status: dict[OrderStatus, int]
    cancelled_by_reason: dict[str, int]


@dataclass(frozen=True)
class SagaDurations:
    """Placement to COMPLETED or CANCELLED, as a histogram, for the orders of one status."""

    status: OrderStatus
    buckets: tuple[tuple[float, int], ...]  # (upper bound in seconds, orders at most that long)
    count: int
    sum_seconds: float


class OrderQueries(OrderStore):
    """Reads only: nothing here changes an order."""

    def prices(self) -> dict[str, dict[str, Any]]:
        rows = self.db.query(lambda c: c.execute(select(catalog).order_by(catalog.c.sku)).all())
        return {r.sku: {"name": r.name, "price_cents": r.price_cents, "currency": r.currency} for r in rows}

    def load(self, window_seconds: float) -> Load:
        """The sagas in flight and how fast sagas finished in the last ``window_seconds``
        (admission control's input: two indexed queries)."""
        now = utcnow()

        def work(conn: Any) -> Load:
            count, oldest = conn.execute(
                select(func.count(), func.min(orders.c.created_at)).where(orders.c.status == OrderStatus.PENDING)
            ).one()
            finished = conn.execute(
                select(func.count())
                .select_from(orders)
                .where(orders.c.finished_at >= now - timedelta(seconds=window_seconds))
            ).scalar_one()
            age = 0.0 if oldest is None else max(0.0, (now - as_utc(oldest)).total_seconds())
            return Load(int(count), age, int(finished), window_seconds)

        return self.db.query(work)

    def find_by_idempotency_key(self, key: str, fingerprint: str | None = None) -> str | None:
        """The order placed with this idempotency key, if any; with the ``fingerprint`` of the
        order asked for now, IdempotencyKeyReused if the key was placed with another."""
        row = self.db.query(
            lambda c: c.execute(
                select(orders.c.order_id, orders.c.request_fingerprint).where(orders.c.idempotency_key == key)
            ).first()
        )
        if row is None:
            return None
        return row.order_id if fingerprint is None else same_order(row, fingerprint)

    def refusals(self) -> int:
        """Orders refused by admission control, in every placing process so far."""
        value = self.db.query(
            lambda c: c.execute(select(admission.c.count).where(admission.c.decision == "refused")).scalar()
        )
        return int(value or 0)

    def find(
        self,
        *,
        status: str | None = None,
        reason: str | None = None,
        older_than: timedelta | None = None,
        newer_than: timedelta | None = None,
        saga_version: int | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Orders matching the filters, newest first (a light row each, not a full view);
        with ``before``, only those listed after that order — the cursor of the next page;
        with ``saga_version``, only those started under that saga definition. Raises
        OrderNotFound for a ``before`` that is no order."""
        query = select(
            *ORDER_SUMMARY,
            orders.c.created_at,
            orders.c.finished_at,
        )
        now = utcnow()
        if status is not None:
            query = query.where(orders.c.status == status.upper())
        if reason is not None:
            query = query.where(orders.c.reason == reason)
        if older_than is not None:
            query = query.where(orders.c.created_at <= now - older_than)
        if newer_than is not None:
            query = query.where(orders.c.created_at >= now - newer_than)
        if saga_version is not None:
            query = query.where(orders.c.saga_version == saga_version)
        newest_first = (orders.c.created_at.desc(), orders.c.order_id.desc())  # ties: a stable order to page by

        def work(conn: Any) -> list[Any]:
            paged = query
            if before is not None:
                cursor = conn.execute(select(orders.c.created_at).where(orders.c.order_id == before)).scalar()
                if cursor is None:
                    raise OrderNotFound(f"no order with id {before!r}")
                paged = paged.where(
                    or_(
                        orders.c.created_at < cursor,
                        and_(orders.c.created_at == cursor, orders.c.order_id < before),
                    )
                )
            return list(conn.execute(paged.order_by(*newest_first).limit(limit)).all())

        return [dict(r._mapping) for r in self.db.query(work)]

    def needing_attention(self) -> list[OrderView]:
        ids = self.db.query(
            lambda c: c.execute(
                select(orders.c.order_id)
                .where(orders.c.status == OrderStatus.NEEDS_ATTENTION)
                .order_by(orders.c.updated_at)
            )
            .scalars()
            .all()
        )
        return [self.view(order_id) for order_id in ids]

    def saga_counts(self) -> SagaCounts:
        def work(conn: Any) -> SagaCounts:
            started = func.count(orders.c.saga_dispatched_at)
            rows = conn.execute(
                select(orders.c.status, orders.c.reason, func.count(), started).group_by(
                    orders.c.status, orders.c.reason
                )
            ).all()
            by_status: dict[OrderStatus, int] = {}
            cancelled: dict[str, int] = {}
            for value, reason, count, _ in rows:
                status = OrderStatus(value)
                by_status[status] = by_status.get(status, 0) + count
                if status == OrderStatus.CANCELLED:
                    cancelled[reason or "unknown"] = cancelled.get(reason or "unknown", 0) + count
            return SagaCounts(
                placed=sum(r[2] for r in rows),
                started=sum(r[3] for r in rows),
                by_status=by_status,
                cancelled_by_reason=cancelled,
            )

        return self.db.query(work)

    def saga_durations(self, bounds: tuple[float, ...]) -> list[SagaDurations]:
        """Histograms of finished sagas' durations (placement to finish), one per terminal
        status, counted by the database."""
        dialect = self.db.engine.dialect.name
        if dialect == "postgresql":
            seconds: Any = func.extract("epoch", orders.c.finished_at - orders.c.created_at)
        elif dialect == "sqlite":
            seconds = (func.julianday(orders.c.finished_at) - func.julianday(orders.c.created_at)) * 86400.0
        else:
            raise NotImplementedError(f"saga durations are counted on PostgreSQL and SQLite, not {dialect}")
        query = (
            select(
                orders.c.status,
                func.count(),
                func.coalesce(func.sum(seconds), 0),
                *(func.sum(case((seconds <= bound, 1), else_=0)) for bound in bounds),
            )
            .where(orders.c.status.in_(TERMINAL), orders.c.finished_at.is_not(None))
            .group_by(orders.c.status)
        )
        rows = self.db.query(lambda c: c.execute(query).all())
        return [
            SagaDurations(
                status=OrderStatus(row[0]),
                buckets=tuple((bound, int(n or 0)) for bound, n in zip(bounds, row[3:], strict=True)),
                count=int(row[1]),
                sum_seconds=float(row[2]),
            )
            for row in rows
        ]

    def view(self, order_id: str) -> OrderView:
        def work(conn: Any) -> OrderView:
            row = conn.execute(select(orders).where(orders.c.order_id == order_id)).first()
            if row is None:
                raise OrderNotFound(f"no order with id {order_id!r}")
            lines = tuple(
                Line(sku=r.sku, qty=r.qty)
                for r in conn.execute(
                    select(order_lines.c.sku, order_lines.c.qty)
                    .where(order_lines.c.order_id == order_id)
                    .order_by(order_lines.c.line_no)
                )
            )
            events = tuple(
                timeline_entry(r, self.saga_of(row))
                for r in conn.execute(
                    select(timeline)
                    .where(timeline.c.order_id == order_id)
                    .order_by(timeline.c.occurred_at, timeline.c.seq)
                )
            )
            return OrderView(
                order_id=row.order_id,
                customer_id=row.customer_id,
                status=OrderStatus(row.status),
                reason=row.reason,
                attention=row.attention,
                total_cents=row.total_cents,
                currency=row.currency,
                lines=lines,
                ship_to=Address(**row.ship_to),
                steps={step: StepOutcome(outcome) for step, outcome in (row.steps or {}).items()},
                events=events,
                created_at=as_utc(row.created_at),
                updated_at=as_utc(row.updated_at),
                deadline_at=as_utc(row.deadline_at),
                finished_at=as_utc(row.finished_at) if row.finished_at is not None else None,
                saga_version=row.saga_version,
            )

        return self.db.query(work)

    def status(self, order_id: str) -> OrderStatus:
        value = self.db.query(
            lambda c: c.execute(select(orders.c.status).where(orders.c.order_id == order_id)).scalar()
        )
        if value is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        return OrderStatus(value)

    # --- the sweeper's questions ------------------------------------------------------

    def overdue(self, limit: int = 500) -> list[str]:
        """Sagas past their deadline that have recorded no progress for a deadline, oldest first."""
        return [order_id for order_id, _progress in self.stalled(limit)]

    def stalled(self, limit: int = 500) -> list[tuple[str, datetime]]:
        """``(order id, last recorded progress)`` of each saga still running past its
        deadline (pushed out after each re-drive) that has recorded nothing — no event, no
        step — for a whole deadline: a saga that moves, however slowly, is not stalled."""
        now = utcnow()
        query = (
            select(orders.c.order_id, orders.c.updated_at)
            .where(
                orders.c.status == OrderStatus.PENDING,
                orders.c.deadline_at <= now,
                orders.c.updated_at <= now - self.deadline,
            )
            .order_by(orders.c.deadline_at)
            .limit(limit)
        )
        rows = self.db.query(lambda c: c.execute(query).all())
        return [(row.order_id, as_utc(row.updated_at)) for row in rows]

    def progress_front(self) -> datetime | None:
        """When the most recently placed of the finished orders was placed. Queues are first
        in, first out: once an order placed after a saga's last progress has finished, the
        queues have moved past anything that saga was waiting for."""
        query = select(orders.c.created_at).where(orders.c.status.in_(TERMINAL)).order_by(orders.c.created_at.desc())
        front = self.db.query(lambda c: c.execute(query.limit(1)).scalar())
        return None if front is None else as_utc(front)


def same_order(row: Any, fingerprint: str) -> str:
    """The id of the order an idempotency key was placed with (a row of ``order_id`` and
    ``request_fingerprint``), if it is the order asked for again; IdempotencyKeyReused if it
    is another. An order placed before fingerprints were kept is taken to be the same."""
    if row.request_fingerprint is not None and row.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(row.order_id)
    return str(row.order_id)


def timeline_entry(row: Any, saga: Saga) -> TimelineEntry:
    # rows written before the step was kept name it by their event type alone
    step, outcome = (row.step, row.outcome) if row.step else known_step(row.event_type, saga)
    compensations = {c.name for c in saga.compensations}
    return TimelineEntry(
        type=row.event_type,
        service=row.service,
        time=as_utc(row.occurred_at),
        step=step,
        outcome=None if outcome is None else StepOutcome(outcome),
        compensation=step in compensations,
        attempts=row.attempts,
        duration_seconds=None if row.duration_ms is None else row.duration_ms / 1000,
    )


def order_rows(db: Database) -> list[dict[str, Any]]:
    """Every order, for the auditor."""
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(select(orders)).all())]
