"""The orchestrator: the order service's decisions about what its saga sends, and when.

It starts a placed order's saga, reviews a failure an error callback reports, compensates
(once), picks up a compensation put off until a failure event confirms it, and re-drives an
overdue saga — each by the saga definition the order started under — over the saga's
memory (:class:`SagaMemory`, one transaction per decision) and a
:class:`app.domain.ports.SagaDispatcher` that sends what was decided. It knows nothing of
Celery: the tasks (``app/messaging/tasks/order.py``) only hand it their message.

What it sends is marked sent only once it has gone out: a crash in between sends it again
when the message that asked is redelivered — at least once, never not at all; every step is
idempotent, so the repeat is harmless.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from app.domain.commands import CompensateOrder
from app.domain.events import FAILURE_EVENTS, Envelope
from app.domain.ports import SagaDispatcher
from app.domain.states import Move, Verdict
from app.services.order.saga_memory import Redrive, SagaMemory

log = logging.getLogger("checkout.coordinator")

#: What :meth:`Coordinator.compensate` did besides the verdicts it stopped at (contradicted,
#: unconfirmed): sent the compensations, or found them sent already (or the order over).
COMPENSATING, NOT_DUE = Move.COMPENSATING, Move.NOT_DUE

#: How :meth:`Coordinator.redrive` moved a saga on.
RESUMED, COMPENSATED = Move.RESUMED, Move.COMPENSATED


class Coordinator:
    def __init__(self, memory: SagaMemory, dispatcher: SagaDispatcher) -> None:
        self.memory = memory
        self.dispatcher = dispatcher

    def start(self, order_id: str) -> bool:
        """Send a placed order's saga, once (False: under way already, or the order is over)."""
        plan = self.memory.plan_saga(order_id)
        if plan is None:
            return False
        self.dispatcher.run_saga(plan.saga, plan.order_id, plan.commands)
        self.memory.saga_dispatched(plan.order_id)
        return True

    def compensate(self, cmd: CompensateOrder) -> Verdict | Move:
        """A step was reported failed (an error callback, an operator, a failure event that
        confirmed an earlier report): compensate if what the order knows bears it out
        (:meth:`SagaMemory.review_failure`), at most once."""
        verdict = self.memory.review_failure(cmd)
        if verdict == Verdict.CONTRADICTED:
            log.warning(
                "order %s: %s was reported failed but succeeded; not compensating (the saga goes on, "
                "or the sweeper re-drives it past its deadline)",
                cmd.order_id,
                cmd.failed_step,
            )
            return verdict
        if verdict == Verdict.UNCONFIRMED:
            log.info(
                "order %s: %s reported failed; compensating once a failure event confirms it",
                cmd.order_id,
                cmd.failed_step,
            )
            return verdict
        plan = self.memory.plan_compensation(cmd)
        if plan is None:
            return Move.NOT_DUE
        log.info("order %s: %s failed; compensating", cmd.order_id, cmd.failed_step)
        self.dispatcher.run_compensation(plan.saga, plan.order_id, plan.compensations, plan.cancel_command)
        self.memory.compensation_dispatched(plan.order_id)
        return Move.COMPENSATING

    def compensate_now(self, order_id: str, reason: str) -> None:
        """An operator gives up on the saga: send every compensation, then the cancellation,
        even where a compensation ran before and stopped (:class:`OrderFinished` if the saga
        is over)."""
        plan = self.memory.plan_operator_compensation(order_id, reason)
        log.info("order %s: compensating at an operator's request (%s)", order_id, reason)
        self.dispatcher.run_compensation(plan.saga, plan.order_id, plan.compensations, plan.cancel_command)

    def record(self, env: Envelope) -> bool:
        """Learn from another service's event (False: seen before); a failure event may
        confirm a failure reported earlier, whose compensation then starts."""
        first = self.memory.record(env)
        if env.event_type in FAILURE_EVENTS:
            deferred = self.memory.deferred_compensation(env.key)
            if deferred is not None:  # an error callback was waiting for this confirmation
                self.compensate(deferred)
        return first

    def plan_redrive(self, order_id: str, give_up_after: timedelta) -> Redrive | None:
        """How to move an overdue saga on (None: it is not overdue any more); the re-drive
        is recorded, and due again only after a longer wait (:meth:`SagaMemory.plan_redrive`)."""
        return self.memory.plan_redrive(order_id, give_up_after)

    def redrive(self, plan: Redrive) -> Move:
        """Send what a re-drive needs: the compensations, or the forward path from the first
        unfinished phase. In choreography nothing: the events sent again move the saga on."""
        if plan.compensation is not None:
            comp = plan.compensation
            self.dispatcher.run_compensation(comp.saga, plan.order_id, comp.compensations, comp.cancel_command)
            return Move.COMPENSATED
        if plan.resume is not None:
            self.dispatcher.run_saga(plan.resume.saga, plan.order_id, plan.resume.commands, plan.done)
        return Move.RESUMED
