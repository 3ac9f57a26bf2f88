"""The saga sweeper: finds sagas that are lost, not merely slow, and re-drives them.

A lost message or a crashed worker can leave a saga with nothing in flight. The sweeper
(``order.sweep`` on Celery beat, a thread when embedded, or ``python -m app sweep`` once)
re-drives such a saga from its recorded state: it resumes the forward path from the first
unfinished step, or — once the saga is older than the give-up limit, or already
compensating — runs its compensations; and it sends again the deliveries of the order's
events that show no sign of having arrived (:meth:`app.persistence.outbox.Relay.missing`), and only those.

Re-driving a saga that is only queued behind a backlog adds work to a system that is
already behind (a metastable failure: recovery work that grows with the load). So the
sweeper re-drives a saga only when

* it has recorded no progress — no event, no step — for a whole deadline
  (``CHECKOUT_SAGA_DEADLINE_SECONDS``), and
* nothing it may be waiting for can still be queued: the service queues are empty, or an
  order placed after the saga's last progress has already finished (queues are first in,
  first out: they have moved past it).

A saga that is merely queued is left alone however old it gets — it is neither re-driven nor
given up on — and the sweeper looks at it again next round. Re-driving is bounded
(``CHECKOUT_SWEEP_MAX_REDRIVES`` a round) and backs off per saga: its next deadline doubles
after each re-drive, with jitter, so sagas lost together do not come back together.

What is sent to re-drive an order joins the order's trace (tracing on): a ``redrive`` span
in the trace of the order's latest event, linked to the sweep run's span.

Finished orders whose story may have a gap (a completed order whose stock was not
committed by its deadline, each cancelled order once) have their missing deliveries sent
again too. Every step and consumer is idempotent, so a delivery sent again that was only
slow is harmless.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from app.domain.states import Move
from app.messaging import Celery, tracing
from app.messaging.queues import queue_depths
from app.services.order import Coordinator
from config.settings import SERVICES, Settings

log = logging.getLogger("checkout.sweeper")

#: A re-drive span's attribute: ``resume`` (an overdue saga; compensating is resuming too),
#: or ``resend`` (a finished order's missing deliveries).
REDRIVE = "checkout.redrive"

#: Never sent again by the sweeper: it re-dispatches the saga itself.
NOT_RESENT = frozenset({"order.start"})


class SweptOrders(Protocol):
    """What the sweeper asks the order service (:class:`app.services.order.OrderService`)."""

    def stalled(self, limit: int = ...) -> list[tuple[str, datetime]]: ...

    def progress_front(self) -> datetime | None: ...

    def unsettled(self, limit: int = ...) -> list[str]: ...


class Redelivery(Protocol):
    """The relay's (:class:`app.persistence.outbox.Relay`): send an order's missing deliveries again."""

    def redeliver(self, order_id: str, skip: frozenset[str] = ...) -> int: ...

    def trace_context(self, order_id: str) -> str | None: ...


class Swept(Protocol):
    """The system the sweeper sweeps (the composition root's runtime): its settings, its
    orders, its relay, and the orchestrator that re-drives through a Celery app."""

    @property
    def settings(self) -> Settings: ...

    @property
    def order(self) -> SweptOrders: ...

    @property
    def relay(self) -> Redelivery: ...

    def coordinator_for(self, app: Celery) -> Coordinator: ...


@dataclass
class SweepReport:
    resumed: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # stalled, but may be waiting in a queue: left alone
    deferred: int = 0  # lost, but over this round's budget: next round
    resent: int = 0  # deliveries sent again
    letters_taken_in: int = 0  # messages the broker dead-lettered on its own, now in the store

    def __str__(self) -> str:
        return (
            f"{len(self.resumed)} saga(s) resumed, {len(self.compensated)} compensated, "
            f"{len(self.republished)} finished order(s) with events sent again; "
            f"{self.resent} delivery(ies) sent again; {len(self.queued)} stalled saga(s) left alone "
            f"(possibly queued), {self.deferred} left for the next round"
        ) + (f"; {self.letters_taken_in} broker dead letter(s) taken in" if self.letters_taken_in else "")


@dataclass(frozen=True)
class Evidence:
    """What tells a lost saga from a queued one, read once a round."""

    waiting: int | None  # messages waiting in the service queues (None: the broker did not say)
    front: datetime | None  # placement time of the most recently placed finished order

    def lost(self, last_progress: datetime) -> bool:
        """Can a saga that last progressed at ``last_progress`` still be waiting in a queue?"""
        if self.waiting == 0:
            return True  # nothing is queued anywhere
        if self.front is not None and self.front > last_progress:
            return True  # the queues have moved past it: an order placed after it has finished
        return False


def waiting_messages(app: Celery, settings: Settings) -> int | None:
    try:
        depths = queue_depths(app, settings, timeout=2.0)
    except Exception:  # the broker is away: nothing can be re-driven now anyway
        log.warning("sweeper: could not read the queues' depths", exc_info=True)
        return None
    return sum(depths[q][0] for q in SERVICES if q in depths)


def redrive_span(relay: Redelivery, order_id: str, why: str) -> AbstractContextManager[Any]:
    """What is sent within joins the order's trace (a no-op when tracing is off)."""
    if not tracing.enabled():
        return nullcontext()
    return tracing.redriving("redrive", relay.trace_context(order_id), **{tracing.ORDER_ID: order_id, REDRIVE: why})


def redrive_overdue(system: Swept, app: Celery) -> SweepReport:
    """One round: re-drive the lost sagas (within the round's budget), through ``app``, and
    send again the missing deliveries of the finished orders whose story may have a gap."""
    report = SweepReport()
    settings = system.settings
    budget = settings.sweep_max_redrives
    give_up = timedelta(seconds=settings.saga_give_up_seconds)
    coordinator = system.coordinator_for(app)
    orders, relay = system.order, system.relay
    stalled = orders.stalled(limit=budget * 4)
    if stalled:
        evidence = Evidence(waiting_messages(app, settings), orders.progress_front())
        for order_id, last_progress in stalled:
            if not evidence.lost(last_progress):
                report.queued.append(order_id)
                continue
            if budget == 0:
                report.deferred += 1
                continue
            plan = coordinator.plan_redrive(order_id, give_up)
            if plan is None:
                continue
            budget -= 1
            with redrive_span(relay, order_id, "resume"):
                report.resent += relay.redeliver(order_id, NOT_RESENT)
                moved = coordinator.redrive(plan)
            if moved == Move.COMPENSATED:
                report.compensated.append(order_id)
            else:  # the forward path resumed (choreography: the deliveries sent again move it on)
                report.resumed.append(order_id)
    if budget > 0:
        for order_id in orders.unsettled(limit=budget):
            with redrive_span(relay, order_id, "resend"):
                report.resent += relay.redeliver(order_id, NOT_RESENT)
            report.republished.append(order_id)
    if report.resumed or report.compensated or report.resent:
        log.warning("sweeper: %s", report)
    elif report.queued:
        log.info("sweeper: %s", report)
    return report
