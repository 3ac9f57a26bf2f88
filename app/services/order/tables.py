"""The order service's tables, and the handle on them that every part of the service shares
(:class:`OrderStore`); the statuses an order goes through are :mod:`app.domain.states`."""

from __future__ import annotations

from datetime import timedelta
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
    insert,
    select,
    update,
)

from app.domain.errors import OrderNotFound
from app.domain.events import Envelope, Event
from app.domain.saga import CHECKOUT, DEFINITIONS, Saga, SagaDefinitions
from app.domain.states import OrderStatus
from app.persistence.db import Database, UnitOfWork
from app.persistence.tables import standard_tables
from app.services.order.projection import timeline_step

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
    Column("status", String(16), nullable=False, index=True),  # an OrderStatus: PENDING, COMPLETED, ...
    Column("reason", String(32)),
    Column("total_cents", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("payment_token", String(64), nullable=False),
    Column("ship_to", JSON, nullable=False),
    Column("idempotency_key", String(128), unique=True),
    # PlaceOrder.fingerprint() of the order placed with the key (None: placed before it was kept)
    Column("request_fingerprint", String(64)),
    Column("saga_state", String(16), nullable=False),  # a SagaState: RUNNING, COMPENSATING, DONE
    Column("steps", JSON, nullable=False),  # step name -> its StepOutcome: done / failed / ...
    Column("failed_step", String(64)),
    Column("failure_reason", String(32)),
    # an error callback reported this step failed before anything confirmed it: the failure
    # event, when it comes, starts the compensation (see SagaMemory.review_failure)
    Column("compensation_deferred", String(64)),
    Column("attention", String(255)),  # why a NEEDS_ATTENTION saga is parked
    # the version of the saga definition the order started under, which it follows to the
    # end (app/domain/saga.py SagaDefinitions.for_order); orders from before it was kept: 1
    Column("saga_version", Integer, nullable=False, server_default="1"),
    Column("redrives", Integer, nullable=False, server_default="0"),  # times the sweeper re-drove it
    Column("compensated", Boolean, nullable=False),
    Column("saga_dispatched_at", DateTime(timezone=True)),
    Column("compensation_dispatched_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),  # orders list: newest first
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), index=True),  # admission control: sagas finished lately
)

#: The columns that sum an order up (who, what state, how much): the orders list and the
#: replay's comparison both start from these.
ORDER_SUMMARY = (
    orders.c.order_id,
    orders.c.customer_id,
    orders.c.status,
    orders.c.reason,
    orders.c.total_cents,
    orders.c.currency,
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

#: Not finished, and not moving on its own: a compensation gave up; an operator must act.
#: (The statuses are :class:`app.domain.states.OrderStatus`; TERMINAL and OPEN are its sets.)
NEEDS_ATTENTION = OrderStatus.NEEDS_ATTENTION


class OrderStore:
    """The order service's database and settings, shared by its parts (its own writes, the
    saga's memory, the read side)."""

    def __init__(
        self,
        db: Database,
        *,
        deadline_seconds: float = 300.0,
        saga: Saga | None = None,
        definitions: SagaDefinitions = DEFINITIONS,
        choreography: bool = False,
    ) -> None:
        self.db = db
        self.deadline = timedelta(seconds=deadline_seconds)
        #: the saga definitions by version; ``saga`` given alone is the only one
        self.definitions = definitions if saga is None else SagaDefinitions.of(saga)
        #: the current definition, that new orders start under
        self.saga = self.definitions.current
        #: Choreography: no canvas runs the saga. The order follows the events: it is
        #: cancelled as soon as a failure is known (every service undoes its own part on
        #: that event), and completed on PaymentCaptured.
        self.choreography = choreography

    def saga_of(self, row: Any) -> Saga:
        """The saga definition an order follows: the one it started under (its row's
        ``saga_version``)."""
        return self.definitions.for_order(row.saga_version)

    def _emit(self, uow: UnitOfWork, evt: Event) -> None:
        add_to_timeline(uow, uow.emit(evt), self.saga)

    def _set(self, order_id: str, **values: Any) -> None:
        def work(uow: UnitOfWork) -> None:
            uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))

        self.db.run(work)


def order_row(uow: UnitOfWork, order_id: str) -> Any:
    """The order's row, locked until the transaction ends.

    Every change to an order goes through here, so two messages about one order (say the
    failure event and the end of the compensations) see each other's writes instead of
    both deciding the other has not happened yet.
    """
    row = uow.conn.execute(select(orders).where(orders.c.order_id == order_id).with_for_update()).first()
    if row is None:
        raise OrderNotFound(f"no order with id {order_id!r}")
    return row


def add_to_timeline(uow: UnitOfWork, env: Envelope, saga: Saga = CHECKOUT) -> None:
    step, outcome = timeline_step(env, saga) or (None, None)
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
