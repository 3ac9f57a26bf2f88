"""The saga's memory: what the order service has recorded of its saga, and the plans it
makes from it.

The order learns how its saga goes from the other services' events (never their tables).
An order is cancelled once two things are known: the compensations have run
(``order.cancel`` arrives at the end of the compensation chain) and why it failed (a
failure event has arrived). Whichever comes second cancels it, so the outcome does not
depend on which message is delivered first.

Every method here is one transaction over the order's row (locked: see
:func:`app.services.order.tables.order_row`); what to send because of it is the
coordinator's (:mod:`app.services.order.coordinator`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.domain.commands import CancelOrder, Command, CompensateOrder
from app.domain.errors import OrderFinished, OrderNotFound
from app.domain.events import Envelope, OrderCancelled
from app.domain.saga import CHECKOUT, Compensation, Saga
from app.domain.states import OPEN, TERMINAL, OrderStatus, SagaState, StepOutcome, Verdict
from app.domain.values import Address, Line
from app.persistence.db import UnitOfWork, as_utc, utcnow
from app.services.order.projection import all_undone, learn
from app.services.order.tables import OrderStore, add_to_timeline, order_lines, order_row, orders

#: What the order knows of a failure a saga's error callback reports (``review_failure``).
CONFIRMED, CONTRADICTED, UNCONFIRMED = Verdict.CONFIRMED, Verdict.CONTRADICTED, Verdict.UNCONFIRMED

#: A saga re-driven again and again waits at most this many deadlines between re-drives.
MAX_REDRIVE_BACKOFF = 16


@dataclass(frozen=True)
class SagaPlan:
    """What the saga of one order needs: one command body per step of the definition it
    follows (the one it started under)."""

    order_id: str
    commands: dict[str, dict[str, Any]]
    saga: Saga = CHECKOUT


@dataclass(frozen=True)
class CompensationPlan:
    """The compensations of the definition the order follows, then its cancellation."""

    order_id: str
    compensations: tuple[Compensation, ...]
    cancel_command: dict[str, Any] = field(default_factory=dict)
    saga: Saga = CHECKOUT


@dataclass(frozen=True)
class Redrive:
    """How the sweeper re-drives an overdue saga: resume its forward path from the first
    unfinished step, or (past the give-up limit, or already compensating) compensate."""

    order_id: str
    resume: SagaPlan | None = None
    done: frozenset[str] = frozenset()
    compensation: CompensationPlan | None = None


def redrive_backoff(deadline: timedelta, redrives: int) -> timedelta:
    """How long after its ``redrives``-th re-drive a saga may be re-driven again: the
    deadline, doubled each time up to :data:`MAX_REDRIVE_BACKOFF` deadlines, plus up to a
    quarter of it at random."""
    factor: int = min(MAX_REDRIVE_BACKOFF, 2 ** min(redrives, 8))
    return deadline * factor * random.uniform(1.0, 1.25)


class SagaMemory(OrderStore):
    """The saga's recorded state, the plans made from it, and the marks that say what was sent."""

    def plan_saga(self, order_id: str) -> SagaPlan | None:
        """The commands of a saga not yet dispatched; None if it is already under way."""

        def work(uow: UnitOfWork) -> SagaPlan | None:
            row = order_row(uow, order_id)
            if row.status in TERMINAL or row.saga_dispatched_at is not None:
                return None
            return SagaPlan(order_id, self._step_commands(uow, row), self.saga_of(row))

        return self.db.run(work)

    def step_commands(self, order_id: str) -> dict[str, dict[str, Any]]:
        """The command each saga step gets for this order, rebuilt from the order's tables."""
        return self.db.run(lambda uow: self._step_commands(uow, order_row(uow, order_id)))

    def saga_dispatched(self, order_id: str) -> None:
        self._set(order_id, saga_dispatched_at=utcnow())

    def review_failure(self, cmd: CompensateOrder) -> Verdict:
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

        def work(uow: UnitOfWork) -> Verdict:
            row = order_row(uow, cmd.order_id)
            if cmd.reason is not None or row.status not in OPEN or row.saga_state == SagaState.COMPENSATING:
                return Verdict.CONFIRMED
            steps = row.steps or {}
            if row.failure_reason is not None or StepOutcome.FAILED in steps.values():
                return Verdict.CONFIRMED
            if steps.get(cmd.failed_step) == StepOutcome.DONE:
                return Verdict.CONTRADICTED
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(compensation_deferred=cmd.failed_step, updated_at=utcnow())
            )
            return Verdict.UNCONFIRMED

        return self.db.run(work)

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

        def work(uow: UnitOfWork) -> CompensationPlan | None:
            row = order_row(uow, cmd.order_id)
            saga = self.saga_of(row)
            saga.step(cmd.failed_step)  # KeyError for a step the order's saga does not have
            if row.status in TERMINAL or row.compensation_dispatched_at is not None:
                return None
            failed_step = row.failed_step or cmd.failed_step
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(
                    saga_state=SagaState.COMPENSATING,
                    failed_step=failed_step,
                    compensation_deferred=None,
                    failure_reason=row.failure_reason or cmd.reason,
                    updated_at=utcnow(),
                )
            )
            # Every step's compensation, not only those up to the failed one: a step after it
            # may have run anyway (a failure reported while the step in fact went on, say);
            # undoing a step that never ran is a no-op that also stops it from running late.
            return self._every_compensation(cmd.order_id, saga)

        return self.db.run(work)

    def plan_operator_compensation(self, order_id: str, reason: str) -> CompensationPlan:
        """An operator gives up on an order's saga: every compensation, whatever ran before —
        a parked saga whose compensation stopped at a step that could not finish is PENDING
        again, and the compensations (each done at most once) run from the start.
        :class:`OrderFinished` if the saga is over."""

        def work(uow: UnitOfWork) -> CompensationPlan:
            row = order_row(uow, order_id)
            if row.status in TERMINAL:
                raise OrderFinished(order_id, row.status)
            now = utcnow()
            saga = self.saga_of(row)
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == order_id)
                .values(
                    status=OrderStatus.PENDING,
                    saga_state=SagaState.COMPENSATING,
                    failed_step=row.failed_step or saga.steps[-1].name,
                    failure_reason=row.failure_reason or reason,
                    compensation_deferred=None,
                    compensation_dispatched_at=now,
                    updated_at=now,
                )
            )
            return self._every_compensation(order_id, saga)

        return self.db.run(work)

    def compensation_dispatched(self, order_id: str) -> None:
        self._set(order_id, compensation_dispatched_at=utcnow())

    def compensations_done(self, cmd: CancelOrder, causation_id: str | None = None) -> OrderStatus:
        """The compensation chain has run; cancel the order if the failure reason is known."""

        def work(uow: UnitOfWork) -> OrderStatus:
            row = order_row(uow, cmd.order_id)
            if row.status in TERMINAL:
                return OrderStatus(row.status)
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
                row = order_row(uow, env.key)
            except OrderNotFound:
                return False
            saga = self.saga_of(row)
            add_to_timeline(uow, env, saga)
            values: dict[str, Any] = {"updated_at": utcnow()}
            values.update(learn(env, row.steps or {}, row.failure_reason, saga))
            uow.conn.execute(update(orders).where(orders.c.order_id == env.key).values(**values))
            if row.status in OPEN:
                self._maybe_cancel(uow, env.key)
            return True

        return self.db.run(work, causation_id=env.event_id)

    def unsettled(self, limit: int = 500) -> list[str]:
        """Finished orders whose story may have a gap: a completed order that has not seen
        every step and its stock committed by its deadline (looked at again each deadline),
        and every cancelled order once. Their events are worth sending again: a lost
        delivery of OrderCompleted, say, would leave the stock reserved for ever."""
        now = utcnow()

        def work(uow: UnitOfWork) -> list[str]:
            rows = uow.conn.execute(
                select(orders.c.order_id, orders.c.status, orders.c.steps, orders.c.saga_version)
                .where(orders.c.status.in_(TERMINAL), orders.c.deadline_at <= now)
                .limit(limit)
            ).all()
            again, done = [], []
            for row in rows:
                steps = row.steps or {}
                if row.status == OrderStatus.COMPLETED and all(
                    steps.get(name) == StepOutcome.DONE for name in _completes(self.saga_of(row))
                ):
                    done.append(row.order_id)
                elif row.status == OrderStatus.COMPLETED:
                    again.append(row.order_id)
                else:
                    done.append(row.order_id)  # cancelled: one pass
            for ids, deadline in ((again, now + self.deadline), (done, now + timedelta(days=3650))):
                if ids:
                    uow.conn.execute(update(orders).where(orders.c.order_id.in_(ids)).values(deadline_at=deadline))
            return again + [r.order_id for r in rows if r.status == OrderStatus.CANCELLED]

        return self.db.run(work)

    def plan_redrive(self, order_id: str, give_up_after: timedelta) -> Redrive | None:
        """Decide, from what was recorded, how to move an overdue saga on; push its deadline
        out — further after each re-drive, with jitter (:func:`redrive_backoff`) — so a saga
        that does not move is re-driven less and less often, and sagas lost together are not
        re-driven together again."""

        def work(uow: UnitOfWork) -> Redrive | None:
            row = order_row(uow, order_id)
            now = utcnow()
            if row.status != OrderStatus.PENDING or as_utc(row.deadline_at) > now:
                return None
            values: dict[str, Any] = {
                "deadline_at": now + redrive_backoff(self.deadline, row.redrives),
                "redrives": row.redrives + 1,
                "updated_at": now,
            }
            give_up = now - as_utc(row.created_at) >= give_up_after
            saga = self.saga_of(row)
            if row.saga_state == SagaState.COMPENSATING or give_up:
                failed_step = row.failed_step or saga.steps[-1].name
                values.update(
                    saga_state=SagaState.COMPENSATING, failed_step=failed_step, compensation_dispatched_at=now
                )
                if give_up:
                    # otherwise the failure event, sent again with the rest, still says why
                    values["failure_reason"] = row.failure_reason or "deadline_exceeded"
                uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
                return Redrive(order_id, compensation=self._every_compensation(order_id, saga))
            if self.choreography:
                # no canvas to re-drive: the services send the order's events again (the
                # caller asks them) and each consumer that missed one acts on it now
                uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
                return Redrive(order_id)
            values["saga_dispatched_at"] = now
            uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
            done = frozenset(step for step, status in (row.steps or {}).items() if status == StepOutcome.DONE)
            resume = SagaPlan(order_id, self._step_commands(uow, row), saga)
            return Redrive(order_id, resume=resume, done=done)

        return self.db.run(work)

    # --- internals ------------------------------------------------------------------

    def _every_compensation(self, order_id: str, saga: Saga) -> CompensationPlan:
        cancel = CancelOrder(order_id=order_id).model_dump(mode="json")
        return CompensationPlan(order_id, saga.compensations, cancel, saga)

    def _maybe_cancel(self, uow: UnitOfWork, order_id: str) -> OrderStatus:
        row = order_row(uow, order_id)
        undone = row.compensated or (self.choreography and all_undone(row.steps or {}, self.saga_of(row)))
        if row.status not in OPEN or not undone or row.failure_reason is None:
            return OrderStatus(row.status)
        now = utcnow()
        uow.conn.execute(
            update(orders)
            .where(orders.c.order_id == order_id)
            .values(
                status=OrderStatus.CANCELLED,
                reason=row.failure_reason,
                attention=None,
                saga_state=SagaState.DONE,
                updated_at=now,
                finished_at=now,
            )
        )
        self._emit(uow, OrderCancelled(order_id=order_id, reason=row.failure_reason))
        return OrderStatus.CANCELLED

    def _step_commands(self, uow: UnitOfWork, row: Any) -> dict[str, dict[str, Any]]:
        """Each step's command, from what the order knows: every command takes the facts it
        declares fields for (a step whose command needs a fact the order does not keep fails
        here, at planning, not in flight)."""
        lines = tuple(
            Line(sku=r.sku, qty=r.qty)
            for r in uow.conn.execute(
                select(order_lines.c.sku, order_lines.c.qty)
                .where(order_lines.c.order_id == row.order_id)
                .order_by(order_lines.c.line_no)
            )
        )
        facts: dict[str, Any] = {
            "order_id": row.order_id,
            "lines": lines,
            "amount_cents": row.total_cents,
            "currency": row.currency,
            "payment_token": row.payment_token,
            "ship_to": Address(**row.ship_to),
        }
        return {step.name: _command(step.command, facts) for step in self.saga_of(row).steps}


def _completes(saga: Saga) -> set[str]:
    """The steps a completed order has seen done once its story is whole."""
    return {step.name for step in saga.steps if step.service != "order"} | {step.name for step in saga.epilogue}


def _command(model: type[Command], facts: dict[str, Any]) -> dict[str, Any]:
    wanted = {name: value for name, value in facts.items() if name in model.model_fields}
    return model.model_validate(wanted).model_dump(mode="json")
