"""The saga sweeper: finds sagas past their deadline and re-drives them.

A lost message or a crashed worker can leave a saga with nothing in flight. The sweeper
(``order.sweep`` on Celery beat, a thread when embedded, or ``python -m app sweep`` once)
re-drives each overdue saga from its recorded state: it resumes the forward path from the
first unfinished step, or — once the saga is older than the give-up limit, or already
compensating — runs its compensations; and it has every service send the order's events
again, in case an event delivery was what got lost. A completed order whose stock was not
committed by its deadline, and each cancelled order once, get their events sent again too. Every step and consumer is
idempotent, so re-driving a saga whose messages were only slow is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from celery import Celery

from app.canvas import build_compensation, build_saga

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("checkout.sweeper")


@dataclass
class SweepReport:
    resumed: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.resumed)} saga(s) resumed, {len(self.compensated)} compensated, "
            f"{len(self.republished)} finished order(s) with events sent again"
        )


def republish(rt: Runtime, app: Celery, order_id: str) -> None:
    """Ask every service to send the order's events again (a delivery may have been lost);
    consumers are idempotent by event id, so the ones that arrived are not applied twice."""
    for service in rt.databases:
        app.send_task(f"{service}.republish", args=({"order_id": order_id},), ignore_result=True)


def redrive_overdue(rt: Runtime, app: Celery) -> SweepReport:
    report = SweepReport()
    give_up = timedelta(seconds=rt.settings.saga_give_up_seconds)
    for order_id in rt.order.overdue():
        plan = rt.order.plan_redrive(order_id, give_up)
        if plan is None:
            continue
        republish(rt, app, order_id)
        if plan.compensation is not None:
            comp = plan.compensation
            build_compensation(app, rt.saga, order_id, comp.compensations, comp.cancel_command).apply_async()
            report.compensated.append(order_id)
        elif plan.resume is not None:
            build_saga(app, rt.saga, order_id, plan.resume.commands, plan.done).apply_async()
            report.resumed.append(order_id)
        else:  # choreography: no canvas; the events sent again move the saga on
            report.resumed.append(order_id)
    for order_id in rt.order.unsettled():
        republish(rt, app, order_id)
        report.republished.append(order_id)
    if report.resumed or report.compensated or report.republished:
        log.warning("sweeper: %s", report)
    return report
