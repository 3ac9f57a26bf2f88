"""Order: the order itself, its prices, and the saga's memory.

The order service places orders, starts the saga, and learns how it goes from the other
services' events (never their tables). An order is cancelled once two things are known:
the compensations have run (``order.cancel`` arrives at the end of the compensation
chain) and why it failed (a failure event has arrived). Whichever comes second cancels
it, so the outcome does not depend on which message is delivered first.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    case,
    func,
    insert,
    select,
    update,
)

from app.domain.admission import Load
from app.domain.catalog import CATALOG, SUPPORTED_CURRENCIES
from app.domain.commands import (
    AuthorizePayment,
    CancelOrder,
    CapturePayment,
    CompensateOrder,
    CompleteOrder,
    ParkOrder,
    PlaceOrder,
    ReserveInventory,
    ScheduleShipment,
)
from app.persistence.db import Database, StepRecord, UnitOfWork, as_utc, standard_tables, utcnow
from app.domain.errors import InvalidOrder, OrderNotFound
from app.domain.events import FAILURE_EVENTS, Envelope, Event, OrderCancelled, OrderCompleted, OrderPlaced
from app.domain.saga import CHECKOUT, Compensation, Saga
from app.domain.values import Address, Line

SERVICE = "order"
metadata = MetaData()
tables = standard_tables(SERVICE, metadata)

catalog = Table(
    "order_catalog",
    metadata,
    Column("sku", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
)

orders = Table(
    "order_orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # PENDING, COMPLETED, CANCELLED, NEEDS_ATTENTION
    Column("reason", String(32)),
    Column("total_cents", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("payment_token", String(64), nullable=False),
    Column("ship_to", JSON, nullable=False),
    Column("idempotency_key", String(128), unique=True),
    Column("saga_state", String(16), nullable=False),  # RUNNING, COMPENSATING, DONE
    Column("steps", JSON, nullable=False),  # step name -> done / failed / ...
    Column("failed_step", String(64)),
    Column("failure_reason", String(32)),
    # an error callback reported this step failed before anything confirmed it: the failure
    # event, when it comes, starts the compensation (see OrderService.review_failure)
    Column("compensation_deferred", String(64)),
    Column("attention", String(255)),  # why a NEEDS_ATTENTION saga is parked
    Column("redrives", Integer, nullable=False, server_default="0"),  # times the sweeper re-drove it
    Column("compensated", Boolean, nullable=False),
    Column("saga_dispatched_at", DateTime(timezone=True)),
    Column("compensation_dispatched_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),  # orders list: newest first
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), index=True),  # admission control: sagas finished lately
)

#: Admission control's decisions that nothing else records: refusals (``refused``), added
#: up by every placing process (see app/domain/admission.py), for metrics.
admission = Table(
    "order_admission",
    metadata,
    Column("decision", String(16), primary_key=True),
    Column("count", Integer, nullable=False),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("sku", String(32), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("unit_price_cents", Integer, nullable=False),
)

timeline = Table(
    "order_timeline",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("service", String(16), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # the step the event reports and how it went: attempts, and milliseconds from the
    # step's first attempt to the event (None where the event does not say)
    Column("step", String(64)),
    Column("outcome", String(16)),
    Column("attempts", Integer),
    Column("duration_ms", Integer),
    UniqueConstraint("order_id", "event_id"),
)

#: What each event says about a step of the saga (for the order's view of its saga).
STEP_EVENTS: dict[str, tuple[str, str]] = {
    "InventoryReserved": ("reserve_inventory", "done"),
    "InventoryReservationFailed": ("reserve_inventory", "failed"),
    "PaymentAuthorized": ("authorize_payment", "done"),
    "PaymentDeclined": ("authorize_payment", "failed"),
    "ShipmentScheduled": ("schedule_shipping", "done"),
    "ShipmentFailed": ("schedule_shipping", "failed"),
    "PaymentCaptured": ("capture_payment", "done"),
    "InventoryReleased": ("release_inventory", "done"),
    "PaymentVoided": ("void_payment", "done"),
    "PaymentRefunded": ("refund_payment", "done"),
    "ShipmentCancelled": ("cancel_shipment", "done"),
    "InventoryCommitted": ("commit_inventory", "done"),
}

#: The order's own events that report a step of its saga (for the timeline only).
OWN_STEP_EVENTS: dict[str, tuple[str, str]] = {"OrderCompleted": ("complete_order", "done")}

TERMINAL = frozenset({"COMPLETED", "CANCELLED"})

#: Not finished, and not moving on its own: a compensation gave up; an operator must act.
NEEDS_ATTENTION = "NEEDS_ATTENTION"

#: Still in flight (possibly parked): a cancellation may still land.
OPEN = frozenset({"PENDING", NEEDS_ATTENTION})

#: What the order knows of a failure a saga's error callback reports (``failure_evidence``).
CONFIRMED, CONTRADICTED, UNCONFIRMED = "confirmed", "contradicted", "unconfirmed"


@dataclass(frozen=True)
class TimelineEntry:
    """One event of an order's story, and what it says about a step of its saga."""

    type: str
    service: str
    time: datetime
    step: str | None = None  # the saga step or compensation it reports, if any
    outcome: str | None = None  # done, failed
    compensation: bool = False  # the step undoes another (release_inventory, void_payment ...)
    attempts: int | None = None  # how many attempts the step took (None: not known)
    duration_seconds: float | None = None  # from the step's first attempt's start to this event


@dataclass(frozen=True)
class OrderView:
    """What a caller sees of an order."""

    order_id: str
    customer_id: str
    status: str
    reason: str | None
    attention: str | None
    total_cents: int
    currency: str
    lines: tuple[Line, ...]
    ship_to: Address
    steps: dict[str, str]
    events: tuple[TimelineEntry, ...]
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    finished_at: datetime | None

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
    by_status: dict[str, int]
    cancelled_by_reason: dict[str, int]


@dataclass(frozen=True)
class SagaDurations:
    """Placement to COMPLETED or CANCELLED, as a histogram, for the orders of one status."""

    status: str
    buckets: tuple[tuple[float, int], ...]  # (upper bound in seconds, orders at most that long)
    count: int
    sum_seconds: float


@dataclass(frozen=True)
class SagaPlan:
    """What the saga of one order needs: one command body per step."""

    order_id: str
    commands: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CompensationPlan:
    order_id: str
    compensations: tuple[Compensation, ...]
    cancel_command: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Redrive:
    """How the sweeper re-drives an overdue saga: resume its forward path from the first
    unfinished step, or (past the give-up limit, or already compensating) compensate."""

    order_id: str
    resume: SagaPlan | None = None
    done: frozenset[str] = frozenset()
    compensation: CompensationPlan | None = None


class OrderService:
    def __init__(
        self, db: Database, *, deadline_seconds: float = 300.0, saga: Saga = CHECKOUT, choreography: bool = False
    ) -> None:
        self.db = db
        self.deadline = timedelta(seconds=deadline_seconds)
        self.saga = saga
        #: Choreography: no canvas runs the saga. The order follows the events: it is
        #: cancelled as soon as a failure is known (every service undoes its own part on
        #: that event), and completed on PaymentCaptured.
        self.choreography = choreography

    # --- catalog --------------------------------------------------------------------

    def seed(self) -> None:
        def work(uow: UnitOfWork) -> None:
            have = set(uow.conn.execute(select(catalog.c.sku)).scalars())
            for product in CATALOG:
                if product.sku not in have:
                    uow.conn.execute(
                        insert(catalog).values(
                            sku=product.sku,
                            name=product.name,
                            price_cents=product.price_cents,
                            currency=product.currency,
                        )
                    )

        self.db.run(work)

    def prices(self) -> dict[str, dict[str, Any]]:
        rows = self.db.query(lambda c: c.execute(select(catalog).order_by(catalog.c.sku)).all())
        return {r.sku: {"name": r.name, "price_cents": r.price_cents, "currency": r.currency} for r in rows}

    # --- placing --------------------------------------------------------------------

    def load(self, window_seconds: float) -> Load:
        """The sagas in flight and how fast sagas finished in the last ``window_seconds``
        (admission control's input: two indexed queries)."""
        now = utcnow()

        def work(conn: Any) -> Load:
            count, oldest = conn.execute(
                select(func.count(), func.min(orders.c.created_at)).where(orders.c.status == "PENDING")
            ).one()
            finished = conn.execute(
                select(func.count())
                .select_from(orders)
                .where(orders.c.finished_at >= now - timedelta(seconds=window_seconds))
            ).scalar_one()
            age = 0.0 if oldest is None else max(0.0, (now - as_utc(oldest)).total_seconds())
            return Load(int(count), age, int(finished), window_seconds)

        return self.db.query(work)

    def find_by_idempotency_key(self, key: str) -> str | None:
        """The order placed with this idempotency key, if any."""
        return self.db.query(
            lambda c: c.execute(select(orders.c.order_id).where(orders.c.idempotency_key == key)).scalar()
        )

    def count_refusals(self, n: int) -> None:
        """Add ``n`` to the refusals recorded (one row, updated in place)."""

        def work(uow: UnitOfWork) -> None:
            done = uow.conn.execute(
                update(admission).where(admission.c.decision == "refused").values(count=admission.c.count + n)
            )
            if done.rowcount == 0:  # the first refusal ever (a race with another: run() again)
                uow.conn.execute(insert(admission).values(decision="refused", count=n))

        self.db.run(work)

    def refusals(self) -> int:
        """Orders refused by admission control, in every placing process so far."""
        value = self.db.query(
            lambda c: c.execute(select(admission.c.count).where(admission.c.decision == "refused")).scalar()
        )
        return int(value or 0)

    def place(self, request: PlaceOrder) -> tuple[str, bool]:
        """Write the order and its OrderPlaced event in one transaction.

        Returns ``(order_id, created)``; an idempotency key seen before returns the
        earlier order and writes nothing. Raises InvalidOrder (nothing written) for an
        unknown SKU or an unsupported currency.
        """
        if request.currency not in SUPPORTED_CURRENCIES:
            raise InvalidOrder(
                "currency",
                f"unsupported currency {request.currency!r}; supported: {', '.join(sorted(SUPPORTED_CURRENCIES))}",
            )

        def work(uow: UnitOfWork) -> tuple[str, bool]:
            if request.idempotency_key is not None:
                existing = uow.conn.execute(
                    select(orders.c.order_id).where(orders.c.idempotency_key == request.idempotency_key)
                ).scalar()
                if existing is not None:
                    return existing, False
            skus = {line.sku for line in request.items}
            prices = {
                r.sku: r
                for r in uow.conn.execute(
                    select(catalog.c.sku, catalog.c.price_cents, catalog.c.currency).where(catalog.c.sku.in_(skus))
                )
            }
            for index, line in enumerate(request.items):
                if line.sku not in prices:
                    raise InvalidOrder(f"items[{index}].sku", f"unknown SKU {line.sku!r} (see list_catalog())")
                if prices[line.sku].currency != request.currency:
                    raise InvalidOrder("currency", f"{line.sku} is not sold in {request.currency}")
            total = sum(prices[line.sku].price_cents * line.qty for line in request.items)
            order_id = str(uuid.uuid4())
            now = utcnow()
            uow.conn.execute(
                insert(orders).values(
                    order_id=order_id,
                    customer_id=request.customer_id,
                    status="PENDING",
                    total_cents=total,
                    currency=request.currency,
                    payment_token=request.payment_token,
                    ship_to=request.ship_to.model_dump(),
                    idempotency_key=request.idempotency_key,
                    saga_state="RUNNING",
                    steps={},
                    compensated=False,
                    # choreography: the saga starts with OrderPlaced itself
                    saga_dispatched_at=now if self.choreography else None,
                    created_at=now,
                    updated_at=now,
                    deadline_at=now + self.deadline,
                )
            )
            uow.conn.execute(
                insert(order_lines),
                [
                    {
                        "order_id": order_id,
                        "line_no": n,
                        "sku": line.sku,
                        "qty": line.qty,
                        "unit_price_cents": prices[line.sku].price_cents,
                    }
                    for n, line in enumerate(request.items, start=1)
                ],
            )
            self._emit(
                uow,
                OrderPlaced(
                    order_id=order_id,
                    customer_id=request.customer_id,
                    ship_to=request.ship_to,
                    lines=request.items,
                    total_cents=total,
                    currency=request.currency,
                    # choreography: payment authorizes from this event, so it needs the token
                    payment_token=request.payment_token if self.choreography else None,
                ),
            )
            return order_id, True

        return self.db.run(work)

    # --- the saga -------------------------------------------------------------------

    def plan_saga(self, order_id: str) -> SagaPlan | None:
        """The commands of a saga not yet dispatched; None if it is already under way."""

        def work(uow: UnitOfWork) -> SagaPlan | None:
            row = _order_row(uow, order_id)
            if row.status in TERMINAL or row.saga_dispatched_at is not None:
                return None
            return SagaPlan(order_id, _step_commands(uow, row))

        return self.db.run(work)

    def step_commands(self, order_id: str) -> dict[str, dict[str, Any]]:
        """The command each saga step gets for this order, rebuilt from the order's tables."""
        return self.db.run(lambda uow: _step_commands(uow, _order_row(uow, order_id)))

    def saga_dispatched(self, order_id: str) -> None:
        self._set(order_id, saga_dispatched_at=utcnow())

    def complete(self, cmd: CompleteOrder, causation_id: str | None = None) -> StepRecord:
        """The last forward step: the order is COMPLETED. Idempotent."""

        def work(uow: UnitOfWork) -> StepRecord:
            recorded = uow.step(cmd.order_id, "complete_order")
            if recorded is not None:
                return recorded
            row = _order_row(uow, cmd.order_id)
            if row.status != "PENDING" or row.saga_state == "COMPENSATING":
                return uow.record_step(cmd.order_id, "complete_order", StepRecord("prevented"))
            now = utcnow()
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(status="COMPLETED", saga_state="DONE", updated_at=now, finished_at=now)
            )
            self._emit(uow, OrderCompleted(order_id=cmd.order_id, total_cents=row.total_cents, currency=row.currency))
            return uow.record_step(cmd.order_id, "complete_order", StepRecord("done"))

        return self.db.run(work, causation_id=causation_id)

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord:
        """The order's own step ran out of retries: remember why, for the cancellation."""

        def work(uow: UnitOfWork) -> StepRecord:
            recorded = uow.step(order_id, step)
            if recorded is not None:
                return recorded
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == order_id, orders.c.failure_reason.is_(None))
                .values(failure_reason=reason, updated_at=utcnow())
            )
            return uow.record_step(order_id, step, StepRecord("failed", reason))

        return self.db.run(work, causation_id=causation_id)

    def review_failure(self, cmd: CompensateOrder) -> str:
        """Is the failure a saga's error callback reports borne out by what the order knows?

        * ``confirmed`` — an operator or the sweeper asked (``reason`` given), a failure
          event arrived (or a step's retries ran out), or the saga is compensating or over:
          go ahead (:meth:`plan_compensation` still compensates at most once);
        * ``contradicted`` — the step that "failed" is known to have succeeded: the callback
          was spurious (Celery reports a step failed when the broker is away as the step's
          next message is published; the step's message comes back and carries the saga
          on). Compensating would undo a saga that succeeded;
        * ``unconfirmed`` — neither yet. The report is kept: the failure event, when it
          comes, starts the compensation (:meth:`deferred_compensation`); if none ever comes,
          the sweeper re-drives the saga at its deadline.
        """

        def work(uow: UnitOfWork) -> str:
            row = _order_row(uow, cmd.order_id)
            if cmd.reason is not None or row.status not in OPEN or row.saga_state == "COMPENSATING":
                return CONFIRMED
            steps = row.steps or {}
            if row.failure_reason is not None or "failed" in steps.values():
                return CONFIRMED
            if steps.get(cmd.failed_step) == "done":
                return CONTRADICTED
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(compensation_deferred=cmd.failed_step, updated_at=utcnow())
            )
            return UNCONFIRMED

        return str(self.db.run(work))

    def deferred_compensation(self, order_id: str) -> CompensateOrder | None:
        """After a failure event: the compensation an unconfirmed report put off, if it is
        now due (None when there is none, or it is under way)."""

        def work(conn: Any) -> CompensateOrder | None:
            row = conn.execute(select(orders).where(orders.c.order_id == order_id)).first()
            if row is None or row.compensation_deferred is None or row.failure_reason is None:
                return None
            if row.status not in OPEN or row.compensation_dispatched_at is not None:
                return None
            return CompensateOrder(order_id=order_id, failed_step=row.compensation_deferred)

        return self.db.query(work)

    def plan_compensation(self, cmd: CompensateOrder) -> CompensationPlan | None:
        """A step failed: which compensations to run, newest first (None if dispatched already)."""
        self.saga.step(cmd.failed_step)  # KeyError for a step the saga does not have

        def work(uow: UnitOfWork) -> CompensationPlan | None:
            row = _order_row(uow, cmd.order_id)
            if row.status in TERMINAL or row.compensation_dispatched_at is not None:
                return None
            failed_step = row.failed_step or cmd.failed_step
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(
                    saga_state="COMPENSATING",
                    failed_step=failed_step,
                    compensation_deferred=None,
                    failure_reason=row.failure_reason or cmd.reason,
                    updated_at=utcnow(),
                )
            )
            # Every step's compensation, not only those up to the failed one: a step after it
            # may have run anyway (a failure reported while the step in fact went on, say);
            # undoing a step that never ran is a no-op that also stops it from running late.
            return CompensationPlan(
                cmd.order_id,
                self.saga.compensations_through(self.saga.steps[-1].name),
                CancelOrder(order_id=cmd.order_id).model_dump(mode="json"),
            )

        return self.db.run(work)

    def compensation_dispatched(self, order_id: str) -> None:
        self._set(order_id, compensation_dispatched_at=utcnow())

    def compensations_done(self, cmd: CancelOrder, causation_id: str | None = None) -> str:
        """The compensation chain has run; cancel the order if the failure reason is known."""

        def work(uow: UnitOfWork) -> str:
            row = _order_row(uow, cmd.order_id)
            if row.status in TERMINAL:
                return str(row.status)
            uow.conn.execute(
                update(orders).where(orders.c.order_id == cmd.order_id).values(compensated=True, updated_at=utcnow())
            )
            return self._maybe_cancel(uow, cmd.order_id)

        return self.db.run(work, causation_id=causation_id)

    def record(self, env: Envelope) -> bool:
        """Learn from another service's event: timeline, saga step, failure reason. Once per event."""

        def work(uow: UnitOfWork) -> bool:
            if not uow.first_time("order.record", env.event_id):
                return False
            try:
                row = _order_row(uow, env.key)
            except OrderNotFound:
                return False
            _add_to_timeline(uow, env)
            values: dict[str, Any] = {"updated_at": utcnow()}
            values.update(learn(env, row.steps or {}, row.failure_reason))
            uow.conn.execute(update(orders).where(orders.c.order_id == env.key).values(**values))
            if row.status in OPEN:
                self._maybe_cancel(uow, env.key)
            return True

        return self.db.run(work, causation_id=env.event_id)

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
                orders.c.status == "PENDING",
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

    def unsettled(self, limit: int = 500) -> list[str]:
        """Finished orders whose story may have a gap: a completed order that has not seen
        every step and its stock committed by its deadline (looked at again each deadline),
        and every cancelled order once. Their events are worth sending again: a lost
        delivery of OrderCompleted, say, would leave the stock reserved for ever."""
        now = utcnow()
        complete = {step.name for step in self.saga.steps if step.service != "order"} | {"commit_inventory"}

        def work(uow: UnitOfWork) -> list[str]:
            rows = uow.conn.execute(
                select(orders.c.order_id, orders.c.status, orders.c.steps)
                .where(orders.c.status.in_(TERMINAL), orders.c.deadline_at <= now)
                .limit(limit)
            ).all()
            again, done = [], []
            for row in rows:
                steps = row.steps or {}
                if row.status == "COMPLETED" and all(steps.get(name) == "done" for name in complete):
                    done.append(row.order_id)
                elif row.status == "COMPLETED":
                    again.append(row.order_id)
                else:
                    done.append(row.order_id)  # cancelled: one pass
            for ids, deadline in ((again, now + self.deadline), (done, now + timedelta(days=3650))):
                if ids:
                    uow.conn.execute(update(orders).where(orders.c.order_id.in_(ids)).values(deadline_at=deadline))
            return again + [r.order_id for r in rows if r.status == "CANCELLED"]

        return self.db.run(work)

    def plan_redrive(self, order_id: str, give_up_after: timedelta) -> Redrive | None:
        """Decide, from what was recorded, how to move an overdue saga on; push its deadline
        out — further after each re-drive, with jitter (:func:`redrive_backoff`) — so a saga
        that does not move is re-driven less and less often, and sagas lost together are not
        re-driven together again."""

        def work(uow: UnitOfWork) -> Redrive | None:
            row = _order_row(uow, order_id)
            now = utcnow()
            if row.status != "PENDING" or as_utc(row.deadline_at) > now:
                return None
            values: dict[str, Any] = {
                "deadline_at": now + redrive_backoff(self.deadline, row.redrives),
                "redrives": row.redrives + 1,
                "updated_at": now,
            }
            give_up = now - as_utc(row.created_at) >= give_up_after
            if row.saga_state == "COMPENSATING" or give_up:
                failed_step = row.failed_step or self.saga.steps[-1].name
                values.update(saga_state="COMPENSATING", failed_step=failed_step, compensation_dispatched_at=now)
                if give_up:
                    # otherwise the failure event, sent again with the rest, still says why
                    values["failure_reason"] = row.failure_reason or "deadline_exceeded"
                uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
                plan = CompensationPlan(
                    order_id,
                    self.saga.compensations_through(self.saga.steps[-1].name),
                    CancelOrder(order_id=order_id).model_dump(mode="json"),
                )
                return Redrive(order_id, compensation=plan)
            if self.choreography:
                # no canvas to re-drive: the services send the order's events again (the
                # caller asks them) and each consumer that missed one acts on it now
                uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
                return Redrive(order_id)
            values["saga_dispatched_at"] = now
            uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
            done = frozenset(step for step, status in (row.steps or {}).items() if status == "done")
            return Redrive(order_id, resume=SagaPlan(order_id, _step_commands(uow, row)), done=done)

        return self.db.run(work)

    def park(self, cmd: ParkOrder) -> bool:
        """A compensation gave up: mark the saga NEEDS_ATTENTION with why. Never silent."""

        def work(uow: UnitOfWork) -> bool:
            row = _order_row(uow, cmd.order_id)
            if row.status in TERMINAL:
                return False
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(status=NEEDS_ATTENTION, attention=f"{cmd.step}: {cmd.reason}"[:255], updated_at=utcnow())
            )
            return True

        return self.db.run(work)

    def resume(self, order_id: str) -> bool:
        """An operator retries a parked saga: it is PENDING again until it finishes."""

        def work(uow: UnitOfWork) -> bool:
            row = _order_row(uow, order_id)
            if row.status != NEEDS_ATTENTION:
                return False
            uow.conn.execute(
                update(orders).where(orders.c.order_id == order_id).values(status="PENDING", updated_at=utcnow())
            )
            return True

        return self.db.run(work)

    def find(
        self,
        *,
        status: str | None = None,
        reason: str | None = None,
        older_than: timedelta | None = None,
        newer_than: timedelta | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Orders matching the filters, newest first (a light row each, not a full view)."""
        query = select(
            orders.c.order_id,
            orders.c.customer_id,
            orders.c.status,
            orders.c.reason,
            orders.c.total_cents,
            orders.c.currency,
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
        rows = self.db.query(lambda c: c.execute(query.order_by(orders.c.created_at.desc()).limit(limit)).all())
        return [dict(r._mapping) for r in rows]

    def needing_attention(self) -> list[OrderView]:
        ids = self.db.query(
            lambda c: c.execute(
                select(orders.c.order_id).where(orders.c.status == NEEDS_ATTENTION).order_by(orders.c.updated_at)
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
            by_status: dict[str, int] = {}
            cancelled: dict[str, int] = {}
            for status, reason, count, _ in rows:
                by_status[status] = by_status.get(status, 0) + count
                if status == "CANCELLED":
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
                status=row[0],
                buckets=tuple((bound, int(n or 0)) for bound, n in zip(bounds, row[3:], strict=True)),
                count=int(row[1]),
                sum_seconds=float(row[2]),
            )
            for row in rows
        ]

    # --- reading --------------------------------------------------------------------

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
                _timeline_entry(r, self.saga)
                for r in conn.execute(
                    select(timeline)
                    .where(timeline.c.order_id == order_id)
                    .order_by(timeline.c.occurred_at, timeline.c.seq)
                )
            )
            return OrderView(
                order_id=row.order_id,
                customer_id=row.customer_id,
                status=row.status,
                reason=row.reason,
                attention=row.attention,
                total_cents=row.total_cents,
                currency=row.currency,
                lines=lines,
                ship_to=Address(**row.ship_to),
                steps=dict(row.steps or {}),
                events=events,
                created_at=as_utc(row.created_at),
                updated_at=as_utc(row.updated_at),
                deadline_at=as_utc(row.deadline_at),
                finished_at=as_utc(row.finished_at) if row.finished_at is not None else None,
            )

        return self.db.query(work)

    def status(self, order_id: str) -> str:
        value = self.db.query(
            lambda c: c.execute(select(orders.c.status).where(orders.c.order_id == order_id)).scalar()
        )
        if value is None:
            raise OrderNotFound(f"no order with id {order_id!r}")
        return str(value)

    # --- internals ------------------------------------------------------------------

    def _emit(self, uow: UnitOfWork, evt: Event) -> None:
        _add_to_timeline(uow, uow.emit(evt))

    def _maybe_cancel(self, uow: UnitOfWork, order_id: str) -> str:
        row = _order_row(uow, order_id)
        undone = row.compensated or (self.choreography and _all_undone(row.steps or {}))
        if row.status not in OPEN or not undone or row.failure_reason is None:
            return str(row.status)
        now = utcnow()
        uow.conn.execute(
            update(orders)
            .where(orders.c.order_id == order_id)
            .values(
                status="CANCELLED",
                reason=row.failure_reason,
                attention=None,
                saga_state="DONE",
                updated_at=now,
                finished_at=now,
            )
        )
        self._emit(uow, OrderCancelled(order_id=order_id, reason=row.failure_reason))
        return "CANCELLED"

    def _set(self, order_id: str, **values: Any) -> None:
        def work(uow: UnitOfWork) -> None:
            uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))

        self.db.run(work)


#: A saga re-driven again and again waits at most this many deadlines between re-drives.
MAX_REDRIVE_BACKOFF = 16


def redrive_backoff(deadline: timedelta, redrives: int) -> timedelta:
    """How long after its ``redrives``-th re-drive a saga may be re-driven again: the
    deadline, doubled each time up to :data:`MAX_REDRIVE_BACKOFF` deadlines, plus up to a
    quarter of it at random."""
    factor: int = min(MAX_REDRIVE_BACKOFF, 2 ** min(redrives, 8))
    return deadline * factor * random.uniform(1.0, 1.25)


def _order_row(uow: UnitOfWork, order_id: str) -> Any:
    """The order's row, locked until the transaction ends.

    Every change to an order goes through here, so two messages about one order (say the
    failure event and the end of the compensations) see each other's writes instead of
    both deciding the other has not happened yet.
    """
    row = uow.conn.execute(select(orders).where(orders.c.order_id == order_id).with_for_update()).first()
    if row is None:
        raise OrderNotFound(f"no order with id {order_id!r}")
    return row


def _step_commands(uow: UnitOfWork, row: Any) -> dict[str, dict[str, Any]]:
    order_id = row.order_id
    lines = tuple(
        Line(sku=r.sku, qty=r.qty)
        for r in uow.conn.execute(
            select(order_lines.c.sku, order_lines.c.qty)
            .where(order_lines.c.order_id == order_id)
            .order_by(order_lines.c.line_no)
        )
    )
    commands = {
        "reserve_inventory": ReserveInventory(order_id=order_id, lines=lines),
        "authorize_payment": AuthorizePayment(
            order_id=order_id, amount_cents=row.total_cents, currency=row.currency, payment_token=row.payment_token
        ),
        "schedule_shipping": ScheduleShipment(order_id=order_id, ship_to=Address(**row.ship_to), lines=lines),
        "capture_payment": CapturePayment(order_id=order_id),
        "complete_order": CompleteOrder(order_id=order_id),
    }
    return {name: cmd.model_dump(mode="json") for name, cmd in commands.items()}


def _add_to_timeline(uow: UnitOfWork, env: Envelope) -> None:
    step, outcome = _step_status(env) or OWN_STEP_EVENTS.get(env.event_type) or (None, None)
    uow.conn.execute(
        insert(timeline).values(
            order_id=env.key,
            event_id=env.event_id,
            event_type=env.event_type,
            service=env.service,
            occurred_at=env.occurred_at,
            step=step,
            outcome=outcome,
            attempts=env.attempts,
            duration_ms=env.duration_ms,
        )
    )


def _timeline_entry(row: Any, saga: Saga) -> TimelineEntry:
    # rows written before the step was kept name it by their event type alone
    known = STEP_EVENTS.get(row.event_type) or OWN_STEP_EVENTS.get(row.event_type) or (None, None)
    step, outcome = (row.step, row.outcome) if row.step else known
    compensations = {s.compensation.name for s in saga.steps if s.compensation is not None}
    return TimelineEntry(
        type=row.event_type,
        service=row.service,
        time=as_utc(row.occurred_at),
        step=step,
        outcome=outcome,
        compensation=step in compensations,
        attempts=row.attempts,
        duration_seconds=None if row.duration_ms is None else row.duration_ms / 1000,
    )


#: Choreography: what each service confirms once it has undone its part of a failed saga
#: (a compensation that had nothing to undo confirms all the same).
UNDONE_BY = ("release_inventory", "void_payment", "cancel_shipment")


def _all_undone(steps: dict[str, str]) -> bool:
    return all(steps.get(step) == "done" for step in UNDONE_BY)


def _step_status(env: Envelope) -> tuple[str, str] | None:
    if env.event_type == "PaymentFailed":
        return (str(env.payload.get("step") or "authorize_payment"), "failed")
    return STEP_EVENTS.get(env.event_type)


# --- the projection's rules, as pure functions ------------------------------------------


def learn(env: Envelope, steps: dict[str, str], failure_reason: str | None) -> dict[str, Any]:
    """What another service's event changes in the order's memory of its saga: the step it
    reports takes that outcome, and the first failure event gives the failure reason.
    Returns only the columns that change. :meth:`OrderService.record` applies it live;
    :func:`fold` applies it to a whole log."""
    values: dict[str, Any] = {}
    step_status = _step_status(env)
    if step_status is not None:
        step, status = step_status
        values["steps"] = {**steps, step: status}
    if env.event_type in FAILURE_EVENTS and failure_reason is None:
        values["failure_reason"] = str(env.payload["reason"])
    return values


@dataclass(frozen=True)
class OrderFacts:
    """An order as its events tell it (see :func:`fold`)."""

    order_id: str
    customer_id: str | None = None  # None: no OrderPlaced in the log
    status: str = "PENDING"
    reason: str | None = None
    total_cents: int | None = None
    currency: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    failure_reason: str | None = None
    event_ids: frozenset[str] = frozenset()


def fold(order_id: str, events: list[Envelope]) -> OrderFacts:
    """The order's projection rebuilt from every service's events about it, oldest first.

    The order's own events carry its decisions: OrderPlaced (customer and totals),
    OrderCompleted and OrderCancelled (status and reason; the service writes each in the
    transaction that changes the status). Every other event goes through :func:`learn`, as
    :meth:`OrderService.record` does live; an event seen twice counts once.

    What only commands tell the service is not here: parking (NEEDS_ATTENTION and its
    ``attention``), the saga's bookkeeping (``saga_state``, ``failed_step``,
    ``compensated``, dispatch times, re-drives) and a failure reason that came with a
    command (an operator's compensation, the sweeper's ``deadline_exceeded``, a step of the
    order's own that gave up) — until the OrderCancelled that carries it.
    """
    facts = OrderFacts(order_id)
    for env in events:
        if env.event_id in facts.event_ids:
            continue
        changes: dict[str, Any] = {"event_ids": facts.event_ids | {env.event_id}}
        payload = env.payload
        if env.event_type == "OrderPlaced":
            changes.update(
                customer_id=str(payload["customer_id"]),
                total_cents=int(payload["total_cents"]),
                currency=str(payload["currency"]),
            )
        elif env.event_type == "OrderCompleted":
            changes["status"] = "COMPLETED"
        elif env.event_type == "OrderCancelled":
            changes.update(status="CANCELLED", reason=str(payload["reason"]))
        else:
            changes.update(learn(env, facts.steps, facts.failure_reason))
        facts = replace(facts, **changes)
    return facts


def order_rows(db: Database) -> list[dict[str, Any]]:
    """Every order, for the auditor."""
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(select(orders)).all())]
