"""Replay: send logged events to a consumer again, and rebuild the order projection from the logs.

Every service's event log (its outbox) keeps every event it ever emitted. Two operator
tools read them all:

* :func:`plan_replay` / :func:`send` — pick events by order, type and age, and send each
  again to one consumer task, through the same publisher port the relay uses, with its
  original event id. Consumers are idempotent by event id (their inbox), so a consumer
  that already handled an event ignores it: replaying is harmless, and only the events a
  consumer has not handled take effect. Replay never goes around the inbox. A *new*
  consumer (a task name with no inbox rows yet) has handled nothing, so it applies
  everything it is sent — that is how it catches up on history. To make an existing
  consumer apply an event a second time, it must forget the event first (delete its
  inbox row, and whatever of its state the event produced): a deliberate act, not an
  option of replay, since most consumers' effects (stock committed, say) must happen once.
* :func:`rebuild_orders` — fold each order's events, from every service's log, oldest
  first, with the order service's own rules (:func:`app.services.order.fold`) into a
  fresh table, and compare it field by field with the live projection.

Plain logic over the databases and the publisher port: no Celery here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, func, insert, select

from app.domain.events import REGISTRY, Envelope
from app.domain.states import OrderStatus
from app.domain.subscriptions import SUBSCRIPTIONS
from app.messaging import tracing
from app.persistence.db import Database, UnitOfWork, row_to_envelope, utcnow
from app.persistence.outbox import Publisher
from app.services.order import ORDER_SUMMARY, OrderFacts, fold, orders, timeline

# --- replay ----------------------------------------------------------------------------


class ReplayError(ValueError):
    """A selection or a consumer that cannot be replayed; the message names what is valid."""


@dataclass(frozen=True)
class Selection:
    """Which logged events to send again: those matching every criterion given."""

    order_id: str | None = None
    types: tuple[str, ...] = ()
    since: datetime | None = None

    def __str__(self) -> str:
        parts = []
        if self.order_id is not None:
            parts.append(f"order {self.order_id}")
        if self.types:
            parts.append("type " + "|".join(self.types))
        if self.since is not None:
            parts.append(f"since {self.since.isoformat(timespec='seconds')}")
        return ", ".join(parts) or "every event"


def consumers(table: Mapping[str, tuple[str, ...]] = SUBSCRIPTIONS) -> dict[str, tuple[str, ...]]:
    """Each consumer task of the subscription table, and the event types it handles."""
    handled: dict[str, list[str]] = defaultdict(list)
    for event_type, tasks in table.items():
        for task in tasks:
            handled[task].append(event_type)
    return {task: tuple(types) for task, types in sorted(handled.items())}


def check(selection: Selection, consumer: str, table: Mapping[str, tuple[str, ...]] = SUBSCRIPTIONS) -> tuple[str, ...]:
    """Refuse an unknown event type or consumer, or a consumer of none of the types asked
    for; return the event types the consumer handles."""
    unknown = [t for t in selection.types if t not in REGISTRY]
    if unknown:
        raise ReplayError(f"unknown event type {', '.join(map(repr, unknown))}; known types: {', '.join(REGISTRY)}")
    known = consumers(table)
    if consumer not in known:
        raise ReplayError(f"unknown consumer {consumer!r}; consumers: {', '.join(known)}")
    handled = known[consumer]
    if selection.types and not set(selection.types) & set(handled):
        who = sorted({task for t in selection.types for task in table.get(t, ())})
        raise ReplayError(
            f"{consumer} does not subscribe to {', '.join(selection.types)}; "
            f"{'consumers of them: ' + ', '.join(who) if who else 'no task subscribes to them'} "
            f"({consumer} handles {', '.join(handled)})"
        )
    return handled


def select_events(databases: Mapping[str, Database], selection: Selection) -> list[Envelope]:
    """The selected events of every service's log, oldest first."""
    found: list[Envelope] = []
    for db in databases.values():
        events = db.tables.events
        query = select(events).order_by(events.c.seq)
        if selection.order_id is not None:
            query = query.where(events.c.key == selection.order_id)
        if selection.types:
            query = query.where(events.c.event_type.in_(selection.types))
        if selection.since is not None:
            query = query.where(events.c.occurred_at >= selection.since.astimezone(UTC))
        found.extend(_envelopes(db, query))
    return _oldest_first(found)


@dataclass(frozen=True)
class ReplayPlan:
    consumer: str
    events: tuple[Envelope, ...]  # to send, oldest first
    skipped: tuple[Envelope, ...]  # selected, but the consumer does not subscribe to them
    already_handled: int  # of ``events``, how many the consumer's inbox holds already

    def by_type(self, events: Iterable[Envelope] | None = None) -> Counter[str]:
        return Counter(env.event_type for env in (self.events if events is None else events))


def plan_replay(
    databases: Mapping[str, Database],
    selection: Selection,
    consumer: str,
    table: Mapping[str, tuple[str, ...]] = SUBSCRIPTIONS,
) -> ReplayPlan:
    """What replaying ``selection`` to ``consumer`` sends, and what it skips (``table``: the
    subscription table of the system's saga mode). Raises :class:`ReplayError` for an
    unknown type or consumer (see :func:`check`)."""
    handled = set(check(selection, consumer, table))
    selected = select_events(databases, selection)
    events = tuple(env for env in selected if env.event_type in handled)
    skipped = tuple(env for env in selected if env.event_type not in handled)
    return ReplayPlan(consumer, events, skipped, _in_inbox(databases, consumer, [env.event_id for env in events]))


def send(plan: ReplayPlan, publisher: Publisher, *, on_sent: Callable[[Envelope], None] | None = None) -> Counter[str]:
    """Send the plan's events, oldest first, each with its original event id; returns how
    many of each type were sent. The message id says it is a replay (logs, dead letters)."""
    sent: Counter[str] = Counter()
    for env in plan.events:
        # traced: a trace of its own, linked to the transaction that wrote the event
        with tracing.replaying(
            f"replay {env.event_type}", env.traceparent, **{tracing.ORDER_ID: env.key, tracing.EVENT_ID: env.event_id}
        ):
            publisher.send(
                plan.consumer,
                env.to_wire(),
                message_id=f"{env.event_id}:{plan.consumer}:replay",
                correlation_id=env.correlation_id,
            )
        sent[env.event_type] += 1
        if on_sent is not None:
            on_sent(env)
    return sent


def _in_inbox(databases: Mapping[str, Database], consumer: str, event_ids: list[str]) -> int:
    """How many of the events the consumer's inbox holds (a consumer that keeps one)."""
    db = databases.get(consumer.split(".", 1)[0])
    if db is None or not event_ids:
        return 0
    inbox = db.tables.inbox
    count = 0
    for start in range(0, len(event_ids), 500):
        query = select(func.count()).where(
            inbox.c.consumer == consumer, inbox.c.event_id.in_(event_ids[start : start + 500])
        )
        count += _scalar(db, query)
    return count


def _scalar(db: Database, query: Any) -> int:
    return int(db.query(lambda c: c.execute(query).scalar_one()))


def _envelopes(db: Database, query: Any) -> list[Envelope]:
    return [row_to_envelope(row) for row in db.query(lambda c: c.execute(query).all())]


def _oldest_first(events: list[Envelope]) -> list[Envelope]:
    # stable: events of one instant keep their service's order and their log order
    return sorted(events, key=lambda env: env.occurred_at)


# --- rebuilding the order projection -----------------------------------------------------

REBUILT_TABLE = "order_orders_rebuilt"

_rebuilt_metadata = MetaData()

#: The order projection as the event logs tell it; dropped and written afresh by each rebuild.
rebuilt = Table(
    REBUILT_TABLE,
    _rebuilt_metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64)),
    Column("status", String(16), nullable=False),
    Column("reason", String(64)),
    Column("total_cents", Integer),
    Column("currency", String(3)),
    Column("steps", JSON, nullable=False),
    Column("failure_reason", String(64)),
    Column("events", Integer, nullable=False),
    Column("rebuilt_at", DateTime(timezone=True), nullable=False),
)

#: The fields compared, live against rebuilt.
COMPARED = ("customer_id", "status", "reason", "total_cents", "currency", "steps", "timeline")

#: What the live projection keeps that no event tells, so it is not compared.
NOT_COMPARED_NOTE = (
    "not compared (commands, not events, set them): parking (a NEEDS_ATTENTION order compares as "
    "PENDING; attention), failure_reason before the cancellation, saga_state, failed_step, "
    "compensated, re-drives, times"
)


@dataclass(frozen=True)
class Difference:
    order_id: str
    field: str  # one of COMPARED, "steps.<step>", or "order" (present on one side only)
    live: Any
    rebuilt: Any


@dataclass
class RebuildReport:
    orders: int = 0  # orders rebuilt
    live: int = 0  # orders in the live projection
    events: int = 0  # events read from the logs
    stray: int = 0  # orders the logs mention that neither side knows (no OrderPlaced, no row)
    differences: list[Difference] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.differences

    @property
    def differing_orders(self) -> list[str]:
        return list(dict.fromkeys(d.order_id for d in self.differences))


def rebuild_orders(databases: Mapping[str, Database]) -> RebuildReport:
    """Rebuild the order projection from every service's log into :data:`REBUILT_TABLE` (in
    the order database, replaced each run) and compare it with the live one."""
    report = RebuildReport()
    logs: dict[str, list[Envelope]] = defaultdict(list)
    for db in databases.values():
        for env in db.log():
            logs[env.key].append(env)
            report.events += 1
    order_db = databases["order"]
    live = {row["order_id"]: row for row in _live_orders(order_db)}
    live_timeline = _live_timeline(order_db)
    facts: dict[str, OrderFacts] = {}
    types: dict[str, str] = {}
    for order_id, events in logs.items():
        folded = fold(order_id, _oldest_first(events))
        if folded.customer_id is None and order_id not in live:
            report.stray += 1  # the order service ignores events of an order it does not have
            continue
        facts[order_id] = folded
        types.update((env.event_id, env.event_type) for env in events)
    report.orders, report.live = len(facts), len(live)
    _write_rebuilt(order_db, facts.values())
    for order_id in sorted(set(live) | set(facts)):
        if order_id not in facts:
            report.differences.append(Difference(order_id, "order", "present", "missing (no events)"))
        elif order_id not in live:
            report.differences.append(Difference(order_id, "order", "missing", "present"))
        else:
            report.differences.extend(
                _compare(live[order_id], live_timeline.get(order_id, set()), facts[order_id], types)
            )
    return report


def _compare(row: dict[str, Any], timeline_ids: set[str], facts: OrderFacts, types: dict[str, str]) -> list[Difference]:
    oid = facts.order_id
    found: list[Difference] = []
    status = OrderStatus.PENDING if row["status"] == OrderStatus.NEEDS_ATTENTION else row["status"]
    if status != facts.status:
        found.append(Difference(oid, "status", row["status"], facts.status))
    for name in ("reason", "customer_id", "total_cents", "currency"):
        if row[name] != getattr(facts, name):
            found.append(Difference(oid, name, row[name], getattr(facts, name)))
    steps = dict(row["steps"] or {})
    for step in sorted(set(steps) | set(facts.steps)):
        if steps.get(step) != facts.steps.get(step):
            found.append(Difference(oid, f"steps.{step}", steps.get(step), facts.steps.get(step)))
    if timeline_ids != facts.event_ids:
        missing = sorted(types.get(e, e) for e in facts.event_ids - timeline_ids)
        extra = sorted(timeline_ids - facts.event_ids)
        live_text = f"{len(timeline_ids)} events" + (f", lacks {', '.join(missing)}" if missing else "")
        live_text += f", {len(extra)} not in any log" if extra else ""
        found.append(Difference(oid, "timeline", live_text, f"{len(facts.event_ids)} events"))
    return found


def _live_orders(db: Database) -> list[dict[str, Any]]:
    query = select(*ORDER_SUMMARY, orders.c.steps)
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(query).all())]


def _live_timeline(db: Database) -> dict[str, set[str]]:
    rows = db.query(lambda c: c.execute(select(timeline.c.order_id, timeline.c.event_id)).all())
    ids: dict[str, set[str]] = defaultdict(set)
    for order_id, event_id in rows:
        ids[order_id].add(event_id)
    return ids


def _write_rebuilt(db: Database, facts: Iterable[OrderFacts]) -> None:
    now = utcnow()
    rows = [
        {
            "order_id": f.order_id,
            "customer_id": f.customer_id,
            "status": f.status,
            "reason": f.reason,
            "total_cents": f.total_cents,
            "currency": f.currency,
            "steps": f.steps,
            "failure_reason": f.failure_reason,
            "events": len(f.event_ids),
            "rebuilt_at": now,
        }
        for f in facts
    ]

    def work(uow: UnitOfWork) -> None:
        rebuilt.drop(uow.conn, checkfirst=True)
        rebuilt.create(uow.conn)
        if rows:
            uow.conn.execute(insert(rebuilt), rows)

    db.run(work)
