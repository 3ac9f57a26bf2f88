"""The Celery tasks: thin adapters between messages and the services.

A task validates its one argument (a command or an event envelope), calls the service,
and maps outcomes to Celery: a business failure stops the canvas (``StepFailed``, which
fires the saga's error callback); a transient failure is retried with exponential backoff
and jitter, and when the retries run out the step is recorded as failed. Nothing is
retried on a bare ``Exception``.

Task names are ``<service>.<verb>`` and ``config.celery.task_routes`` sends each to its
service's queue. Each task takes exactly one positional argument.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from celery import Celery, Task
from sqlalchemy.exc import DBAPIError, OperationalError

from app.canvas import build_compensation, build_saga
from app.commands import (
    AuthorizePayment,
    CancelOrder,
    CancelShipment,
    Command,
    CapturePayment,
    CompensateOrder,
    CompleteOrder,
    RefundPayment,
    ReleaseInventory,
    ReserveInventory,
    ScheduleShipment,
    VoidPayment,
)
from app.db import StepRecord
from app.errors import StepFailed, TransientFailure
from app.events import Envelope

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("checkout.tasks")

#: Faults worth retrying. A database that is briefly unreachable or locked is one.
TRANSIENT = (TransientFailure, OperationalError)

#: Compensations must finish: they retry this many times more than forward steps.
COMPENSATION_RETRY_FACTOR = 4


class CeleryPublisher:
    """The relay's way onto the broker (see :class:`app.bus.Publisher`)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        self.app.send_task(task, args=(body,), task_id=message_id, ignore_result=True)


def backoff(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""
    delay = min(cap, base * (2**retries))
    return float(delay / 2 + random.uniform(0, delay / 2))


def _reason_of(exc: BaseException, service: str) -> str:
    if isinstance(exc, TransientFailure):
        return exc.reason
    if isinstance(exc, DBAPIError):
        return f"{service}_unavailable"
    return "unexpected_error"


def register_tasks(app: Celery, rt: Runtime) -> None:
    """Define every task of the system on ``app``, bound to the runtime's services."""
    settings = rt.settings

    def retry_or(task: Task, exc: BaseException, *, compensation: bool, give_up: Callable[[], None]) -> NoReturn:
        limit = settings.retry_max * (COMPENSATION_RETRY_FACTOR if compensation else 1)
        if task.request.retries < limit:
            countdown = backoff(task.request.retries, settings.retry_base_seconds, settings.retry_cap_seconds)
            log.info(
                "%s: transient failure (%s); retry %d in %.2fs", task.name, exc, task.request.retries + 1, countdown
            )
            raise task.retry(exc=exc, countdown=countdown, max_retries=limit)
        give_up()
        raise exc

    def forward(
        step: str, command: type[Command], handle: Callable[[Any, str], StepRecord], give_up: Callable[..., Any]
    ) -> Callable[..., Any]:
        def run(self: Task, body: dict[str, Any]) -> dict[str, Any]:
            cmd = command.model_validate(body)
            try:
                record = handle(cmd, self.request.id)
            except TRANSIENT as exc:
                fault = exc
                reason = _reason_of(fault, self.name.split(".", 1)[0])

                def record_failure() -> None:
                    give_up(cmd.order_id, step, reason, self.request.id)
                    raise StepFailed(step, reason) from fault

                retry_or(self, fault, compensation=False, give_up=record_failure)
            if record.outcome in {"failed", "prevented"}:
                raise StepFailed(step, record.reason or record.outcome)
            return {"order_id": cmd.order_id, "step": step, "outcome": record.outcome}

        return run

    def compensate(command: type[Command], handle: Callable[[Any, str], StepRecord]) -> Callable[..., Any]:
        def run(self: Task, body: dict[str, Any]) -> dict[str, Any]:
            cmd = command.model_validate(body)
            try:
                record = handle(cmd, self.request.id)
            except TRANSIENT as exc:
                retry_or(self, exc, compensation=True, give_up=lambda: None)
            return {"order_id": cmd.order_id, "outcome": record.outcome}

        return run

    def define(name: str, fn: Callable[..., Any], **options: Any) -> None:
        app.task(name=name, bind=True, shared=False, throws=(StepFailed,), **options)(fn)

    # --- forward steps -------------------------------------------------------------
    define(
        "inventory.reserve",
        forward("reserve_inventory", ReserveInventory, rt.inventory.reserve, rt.inventory.give_up),
    )
    define(
        "payment.authorize",
        forward("authorize_payment", AuthorizePayment, rt.payment.authorize, rt.payment.give_up),
    )
    define(
        "shipping.schedule",
        forward("schedule_shipping", ScheduleShipment, rt.shipping.schedule, rt.shipping.give_up),
    )
    define(
        "payment.capture",
        forward("capture_payment", CapturePayment, rt.payment.capture, rt.payment.give_up),
    )
    define(
        "order.complete",
        forward("complete_order", CompleteOrder, rt.order.complete, rt.order.give_up),
    )

    # --- compensations ------------------------------------------------------------
    define("inventory.release", compensate(ReleaseInventory, rt.inventory.release))
    define("payment.void", compensate(VoidPayment, rt.payment.void))
    define("payment.refund", compensate(RefundPayment, rt.payment.refund))
    define("shipping.cancel", compensate(CancelShipment, rt.shipping.cancel))

    # --- the saga's own moves (order service) -------------------------------------
    def start(self: Task, body: dict[str, Any]) -> None:
        env = Envelope.model_validate(body)
        plan = rt.order.plan_saga(env.key)
        if plan is None:
            return
        build_saga(app, rt.saga, plan.order_id, plan.commands).apply_async()
        rt.order.saga_dispatched(plan.order_id)

    def compensate_order(self: Task, body: dict[str, Any]) -> None:
        cmd = CompensateOrder.model_validate(body)
        plan = rt.order.plan_compensation(cmd)
        if plan is None:
            return
        log.info("order %s: %s failed; compensating", cmd.order_id, cmd.failed_step)
        build_compensation(app, rt.saga, plan.order_id, plan.compensations, plan.cancel_command).apply_async()
        rt.order.compensation_dispatched(plan.order_id)

    def cancel(self: Task, body: dict[str, Any]) -> str:
        return rt.order.compensations_done(CancelOrder.model_validate(body), self.request.id)

    def record(self: Task, body: dict[str, Any]) -> None:
        rt.order.record(Envelope.model_validate(body))

    events = {"ignore_result": True, "autoretry_for": TRANSIENT, "retry_backoff": True, "max_retries": None}
    define("order.start", start, **events)
    define("order.compensate", compensate_order, **events)
    define("order.cancel", cancel, **events)
    define("order.record", record, **events)

    # --- inventory's reactions to the order's outcome ------------------------------
    def commit(self: Task, body: dict[str, Any]) -> None:
        rt.inventory.on_order_completed(Envelope.model_validate(body))

    def release_on_cancel(self: Task, body: dict[str, Any]) -> None:
        rt.inventory.on_order_cancelled(Envelope.model_validate(body))

    define("inventory.commit", commit, **events)
    define("inventory.release_on_cancel", release_on_cancel, **events)
