"""The Celery tasks: thin adapters between messages and the services.

A task validates its one argument (a command or an event envelope), calls the service,
and maps outcomes to Celery:

* business failure — the service recorded it; ``StepFailed`` stops the canvas (its error
  callback compensates). The message is acknowledged: a decline is a fact, not a fault;
* transient failure — retried with exponential backoff and jitter; when the retries run
  out the step is recorded as failed, the message becomes a dead letter and is rejected
  (RabbitMQ routes it to ``<queue>.dlq``); Celery still fires the canvas's error callback;
* malformed message (fails its schema) — a dead letter at once, never retried;
* anything else is a bug: not retried; logged, and kept as a dead letter with its error
  (``unexpected error: ...``), to be redriven once the bug is fixed. Celery would otherwise
  acknowledge the message and keep nothing.

Task names are ``<service>.<verb>``; ``config.celery.task_routes`` sends each to its
service's queue. Each task takes exactly one positional argument.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import random
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from celery import Celery, Task
from celery.app.task import X_DEATH_HEADERS
from celery.exceptions import Ignore, Reject, Retry
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.persistence import attempts
from app.messaging.canvas import build_compensation, build_saga
from app.domain.commands import (
    AuthorizePayment,
    CancelOrder,
    CancelShipment,
    CapturePayment,
    Command,
    CompensateOrder,
    CompleteOrder,
    ParkOrder,
    RefundPayment,
    ReleaseInventory,
    ReserveInventory,
    ScheduleShipment,
    VoidPayment,
)
from app.persistence.db import StepRecord
from app.domain.errors import OrderNotFound, StepFailed, TransientFailure
from app.extensions import Extension, NotSubscribed
from app.services.order import CONTRADICTED, UNCONFIRMED
from app.domain.events import FAILURE_EVENTS, Envelope, OrderPlaced, UnreadableEvent
from config.celery import retry_countdown
from config.settings import SERVICES

if TYPE_CHECKING:
    from app.bootstrap import Runtime

log = logging.getLogger("checkout.tasks")

#: Faults worth retrying. A database that is briefly unreachable or locked is one, and so is
#: a connection pool with no connection free in time (every connection busy under a burst).
TRANSIENT = (TransientFailure, OperationalError, PoolTimeout)

#: Compensations and event consumers must finish: they retry this many times more.
PERSISTENT_RETRY_FACTOR = 4

#: Header carrying when a message first failed, kept across retries.
FIRST_FAILURE = "x_first_failure"

#: Header carrying when a step's first attempt started, kept across retries (for the
#: order's story: how long the step took; see app/persistence/attempts.py).
FIRST_ATTEMPT = "x_first_attempt"


class CeleryPublisher:
    """The relay's way onto the broker (see :class:`app.persistence.outbox.Publisher`)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    #: An event that cannot be published at once stays in the outbox for the sweep, so the
    #: relay does not wait for the broker the way a saga's next step does.
    retry_policy: dict[str, Any] = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        self.app.send_task(task, args=(body,), task_id=message_id, ignore_result=True, retry_policy=self.retry_policy)


def backoff(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""
    delay = min(cap, base * (2**retries))
    return float(delay / 2 + random.uniform(0, delay / 2))


def _reason_of(exc: BaseException, service: str) -> str:
    if isinstance(exc, TransientFailure):
        return exc.reason
    if isinstance(exc, (DBAPIError, PoolTimeout)):
        return f"{service}_unavailable"
    return "unexpected_error"


def _order_of(body: Any) -> str | None:
    if isinstance(body, dict):
        value = body.get("order_id") or body.get("key")
        return str(value)[:64] if value else None
    return None


def _first_error(exc: ValidationError) -> str:
    """Where and what the first validation error is: ``amount_cents: Input should be ...``."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


#: Headers the broker puts on a delivery — RabbitMQ's dead-letter history, a quorum queue's
#: delivery count — and that must not travel on a message sent again: RabbitMQ's cycle
#: detection holds back or drops a message dead-lettered into a queue its history already
#: names (a retry countdown through the delayed-delivery queues an earlier retry passed).
BROKER_HEADERS = frozenset(X_DEATH_HEADERS | {"x-delivery-count"})


def _headers(task: Task) -> dict[str, Any]:
    return {k: v for k, v in (task.request.headers or {}).items() if k not in BROKER_HEADERS}


def _attempt(task: Task, step: str) -> AbstractContextManager[attempts.Attempt]:
    """Bind which attempt at ``step`` this delivery is (retries + 1) and when the first one
    started, so the service records them with the step's outcome and events. (A message
    redelivered because a worker died is not counted: the broker cannot tell that apart
    from one handed back unstarted at a worker's shutdown.)"""
    started = datetime.now(UTC)
    first = _headers(task).get(FIRST_ATTEMPT)
    if isinstance(first, str):
        try:
            parsed = datetime.fromisoformat(first)
            started = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            log.warning("%s[%s]: ignoring a malformed %s header", task.name, task.request.id, FIRST_ATTEMPT)
    return attempts.attempt(step, task.request.retries + 1, started)


def register_tasks(app: Celery, rt: Runtime) -> None:
    """Define every task of the system on ``app``, bound to the runtime's services."""
    settings = rt.settings

    def dead_letter(task: Task, body: Any, reason: str, exc: BaseException) -> NoReturn:
        """Keep the message in the dead-letter store, then reject it (no requeue)."""
        service = task.name.split(".", 1)[0]
        signature = task.signature_from_request(task.request, retries=0, headers=_headers(task))
        first = _headers(task).get(FIRST_FAILURE)
        rt.dead_letters.record(
            service,
            message_key=str(task.request.id),
            queue=service,
            task=task.name,
            order_id=_order_of(body),
            reason=reason,
            error=repr(exc),
            traceback="".join(traceback.format_exception(exc)),
            attempts=task.request.retries + 1,
            message={"kind": "task", "signature": json.loads(json.dumps(dict(signature), default=str))},
            first_failed_at=datetime.fromisoformat(first) if first else None,
        )
        log.warning("%s[%s] dead-lettered: %s", task.name, task.request.id, reason)
        raise Reject(reason, requeue=False)

    def retry_or_dead_letter(
        task: Task, body: Any, exc: BaseException, *, persistent: bool, give_up: Callable[[str], None]
    ) -> NoReturn:
        limit = settings.retry_max * (PERSISTENT_RETRY_FACTOR if persistent else 1)
        reason = _reason_of(exc, task.name.split(".", 1)[0])
        if task.request.retries < limit:
            countdown = retry_countdown(
                settings, backoff(task.request.retries, settings.retry_base_seconds, settings.retry_cap_seconds)
            )
            log.info(
                "%s: transient failure (%s); retry %d in %.2fs", task.name, exc, task.request.retries + 1, countdown
            )
            headers = _headers(task)
            headers.setdefault(FIRST_FAILURE, datetime.now(UTC).isoformat())
            current = attempts.current()
            if current is not None:
                headers.setdefault(FIRST_ATTEMPT, current.started_at.isoformat())
            raise task.retry(exc=exc, countdown=countdown, max_retries=limit, headers=headers)
        give_up(reason)
        dead_letter(task, body, f"retries exhausted ({limit}): {reason}", exc)

    def parse(task: Task, model: type[BaseModel], body: Any) -> Any:
        """The message as ``model``, or a dead letter at once. An event's envelope ignores
        metadata it does not know, but its payload must fit the model registered for its
        type and version: an event this code cannot read waits as a dead letter (to be
        redriven once the workers can read it) instead of being half-understood."""
        try:
            message = model.model_validate(body)
        except ValidationError as exc:
            dead_letter(task, body, f"invalid {model.__name__}: {_first_error(exc)}", exc)
        if isinstance(message, Envelope):
            try:
                message.open()
            except UnreadableEvent as exc:
                dead_letter(task, body, f"unreadable event: {exc}", exc)
            except ValidationError as exc:
                kind = f"{message.event_type} version {message.version}"
                dead_letter(task, body, f"invalid {kind} payload: {_first_error(exc)}", exc)
        return message

    def define(name: str, fn: Callable[..., Any], **options: Any) -> None:
        def guarded(self: Task, *args: Any) -> Any:  # (body,) — the sweep takes none
            try:
                return fn(self, *args)
            except (StepFailed, Retry, Reject, Ignore):  # a business failure; Celery's own control flow
                raise
            except Exception as exc:  # a bug: keep the message where an operator sees it and can redrive it
                log.exception("%s[%s] failed unexpectedly", self.name, self.request.id)
                body = args[0] if args else None
                dead_letter(self, body, f"unexpected error: {type(exc).__name__}: {exc}"[:255], exc)

        functools.update_wrapper(guarded, fn)
        guarded.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]  # Celery checks arguments by it
        app.task(name=name, bind=True, shared=False, throws=(StepFailed,), **options)(guarded)

    # --- forward steps -------------------------------------------------------------
    def run_step(
        task: Task,
        body: Any,
        step: str,
        order_id: str,
        call: Callable[[], StepRecord | None],
        give_up: Callable[..., Any],
    ) -> StepRecord | None:
        """Run a saga step (whatever sent it: a canvas or an event) as one attempt: an
        unknown order is a dead letter; a transient failure is retried, and once the retries
        run out the step gives up (its service says so with a failure event)."""
        with _attempt(task, step):
            try:
                return call()
            except OrderNotFound as exc:
                dead_letter(task, body, f"unknown order: {exc}", exc)
            except TRANSIENT as exc:
                retry_or_dead_letter(
                    task,
                    body,
                    exc,
                    persistent=False,
                    give_up=lambda reason: give_up(order_id, step, reason, task.request.id),
                )

    def forward(
        step: str, command: type[Command], handle: Callable[[Any, str], StepRecord], give_up: Callable[..., Any]
    ) -> Callable[..., Any]:
        def run(self: Task, body: Any) -> dict[str, Any]:
            cmd = parse(self, command, body)
            record = run_step(self, body, step, cmd.order_id, lambda: handle(cmd, self.request.id), give_up)
            assert record is not None
            if record.outcome in {"failed", "prevented"}:
                raise StepFailed(step, record.reason or record.outcome)
            return {"order_id": cmd.order_id, "step": step, "outcome": record.outcome}

        return run

    define(
        "inventory.reserve", forward("reserve_inventory", ReserveInventory, rt.inventory.reserve, rt.inventory.give_up)
    )
    define(
        "payment.authorize", forward("authorize_payment", AuthorizePayment, rt.payment.authorize, rt.payment.give_up)
    )
    define(
        "shipping.schedule", forward("schedule_shipping", ScheduleShipment, rt.shipping.schedule, rt.shipping.give_up)
    )
    define("payment.capture", forward("capture_payment", CapturePayment, rt.payment.capture, rt.payment.give_up))
    define("order.complete", forward("complete_order", CompleteOrder, rt.order.complete, rt.order.give_up))

    # --- compensations and the order's own moves: they must finish ----------------
    compensations = {s.compensation.name for s in rt.saga.steps if s.compensation is not None}

    def persistent(
        model: type[BaseModel], handle: Callable[[Any, str], Any], *, step: str | None = None
    ) -> Callable[..., Any]:
        """A task that retries long; a compensation (``step`` given) that still cannot
        finish parks its saga as NEEDS_ATTENTION, so it never ends silently."""

        def run(self: Task, body: Any) -> Any:
            message = parse(self, model, body)
            timed = _attempt(self, step) if step in compensations else nullcontext()
            with timed:
                try:
                    result = handle(message, self.request.id)
                except OrderNotFound as exc:  # well-formed, but about no order of this system
                    dead_letter(self, body, f"unknown order: {exc}", exc)
                except TRANSIENT as exc:

                    def park(reason: str) -> None:
                        if step is not None:
                            order_id = str(getattr(message, "order_id", None) or message.key)
                            park_body = ParkOrder(order_id=order_id, step=step, reason=reason).model_dump(mode="json")
                            app.send_task("order.park", args=(park_body,))

                    retry_or_dead_letter(self, body, exc, persistent=True, give_up=park)
            return result.outcome if isinstance(result, StepRecord) else result

        return run

    # (handlers are looked up at call time, so a service can be swapped or patched)
    define(
        "inventory.release",
        persistent(ReleaseInventory, lambda cmd, cid: rt.inventory.release(cmd, cid), step="release_inventory"),
    )
    define("payment.void", persistent(VoidPayment, lambda cmd, cid: rt.payment.void(cmd, cid), step="void_payment"))
    define(
        "payment.refund", persistent(RefundPayment, lambda cmd, cid: rt.payment.refund(cmd, cid), step="refund_payment")
    )
    define(
        "shipping.cancel",
        persistent(CancelShipment, lambda cmd, cid: rt.shipping.cancel(cmd, cid), step="cancel_shipment"),
    )

    def start(env: Envelope, _message_id: str) -> None:
        plan = rt.order.plan_saga(env.key)
        if plan is None:
            return
        build_saga(app, rt.saga, plan.order_id, plan.commands).apply_async()
        rt.order.saga_dispatched(plan.order_id)

    def compensate(cmd: CompensateOrder, _message_id: str) -> None:
        verdict = rt.order.review_failure(cmd)
        if verdict == CONTRADICTED:
            log.warning(
                "order %s: %s was reported failed but succeeded; not compensating (the saga goes on, "
                "or the sweeper re-drives it past its deadline)",
                cmd.order_id,
                cmd.failed_step,
            )
            return
        if verdict == UNCONFIRMED:
            log.info(
                "order %s: %s reported failed; compensating once a failure event confirms it",
                cmd.order_id,
                cmd.failed_step,
            )
            return
        plan = rt.order.plan_compensation(cmd)
        if plan is None:
            return
        log.info("order %s: %s failed; compensating", cmd.order_id, cmd.failed_step)
        build_compensation(app, rt.saga, plan.order_id, plan.compensations, plan.cancel_command).apply_async()
        rt.order.compensation_dispatched(plan.order_id)

    def sweep(self: Task) -> str:
        from app.operations.sweeper import redrive_overdue

        return str(redrive_overdue(rt, app))

    define("order.sweep", sweep, ignore_result=True)

    class Republish(BaseModel):
        order_id: str = Field(min_length=1, max_length=64)

    def republisher(service: str) -> Callable[[Any, str], int]:
        def send_again(cmd: Any, _message_id: str) -> int:
            events = rt.databases[service].log(cmd.order_id)
            rt.relay.publish(service, events)
            return len(events)

        return send_again

    for service in SERVICES:
        define(f"{service}.republish", persistent(Republish, republisher(service)), ignore_result=True)

    quiet = {"ignore_result": True}
    define("order.start", persistent(Envelope, start), **quiet)
    define("order.compensate", persistent(CompensateOrder, compensate, step="compensate_order"), **quiet)
    define("order.cancel", persistent(CancelOrder, rt.order.compensations_done, step="cancel_order"), **quiet)

    def record(env: Envelope, _message_id: str) -> bool:
        first = rt.order.record(env)
        if env.event_type in FAILURE_EVENTS:
            deferred = rt.order.deferred_compensation(env.key)
            if deferred is not None:  # an error callback was waiting for this confirmation
                compensate(deferred, _message_id)
        return first

    define("order.record", persistent(Envelope, record), **quiet)
    define("order.park", persistent(ParkOrder, lambda cmd, _id: rt.order.park(cmd)), **quiet)
    define("inventory.commit", persistent(Envelope, lambda env, _id: rt.inventory.on_order_completed(env)), **quiet)
    define(
        "inventory.release_on_cancel",
        persistent(Envelope, lambda env, _id: rt.inventory.on_order_cancelled(env)),
        **quiet,
    )

    # --- choreography: the services react to each other's events (no canvas) ---------
    def reaction(
        step: str,
        decide: Callable[[Envelope], Command | None],
        handle: Callable[[Any, str], StepRecord],
        give_up: Callable[..., Any],
    ) -> Callable[..., Any]:
        """A saga step run because of an event: ``decide`` turns the event into the step's
        command (None: nothing to do yet). A business failure needs nothing more here: the
        service has said so with a failure event, and every service reacts to that."""

        def run(self: Task, body: Any) -> dict[str, Any] | None:
            env = parse(self, Envelope, body)

            def decided() -> StepRecord | None:
                try:
                    cmd = decide(env)
                except ValidationError as exc:
                    dead_letter(self, body, f"invalid {env.event_type} payload: {_first_error(exc)}", exc)
                return None if cmd is None else handle(cmd, self.request.id)

            record = run_step(self, body, step, env.key, decided, give_up)
            if record is None:
                return None
            return {"order_id": env.key, "step": step, "outcome": record.outcome}

        return run

    def placed(env: Envelope) -> OrderPlaced:
        evt = env.open()
        if not isinstance(evt, OrderPlaced):
            raise TypeError(f"expected OrderPlaced, got {env.event_type}")
        return evt

    def to_reserve(env: Envelope) -> ReserveInventory:
        return ReserveInventory(order_id=env.key, lines=placed(env).lines)

    def to_authorize(env: Envelope) -> AuthorizePayment | None:
        evt = placed(env)
        if evt.payment_token is None:  # placed by an orchestrated system: its canvas authorizes
            log.warning("order %s: OrderPlaced carries no payment token; not authorizing", env.key)
            return None
        return AuthorizePayment(
            order_id=env.key, amount_cents=evt.total_cents, currency=evt.currency, payment_token=evt.payment_token
        )

    # (no canvas waits for their results: none is kept)
    define(
        "inventory.reserve_on_placed",
        reaction("reserve_inventory", to_reserve, rt.inventory.reserve, rt.inventory.give_up),
        **quiet,
    )
    define(
        "payment.authorize_on_placed",
        reaction("authorize_payment", to_authorize, rt.payment.authorize, rt.payment.give_up),
        **quiet,
    )
    define(
        "shipping.join",
        reaction("schedule_shipping", rt.shipping.join, rt.shipping.schedule, rt.shipping.give_up),
        **quiet,
    )
    define(
        "payment.capture_on_scheduled",
        reaction(
            "capture_payment", lambda env: CapturePayment(order_id=env.key), rt.payment.capture, rt.payment.give_up
        ),
        **quiet,
    )
    define(
        "order.complete_on_captured",
        reaction("complete_order", lambda env: CompleteOrder(order_id=env.key), rt.order.complete, rt.order.give_up),
        **quiet,
    )

    # Each service undoes its own part on a failure event or OrderCancelled: undoing what
    # never happened is a no-op that also stops it from happening late. Each says it is
    # done with an event even when there was nothing to undo: the order is cancelled once
    # it has heard from all three (refund first: the void confirms last).
    def undo_payment(env: Envelope, cid: str) -> str:
        refund = rt.payment.refund(RefundPayment(order_id=env.key), cid)
        void = rt.payment.void(VoidPayment(order_id=env.key), cid, confirm=True)
        return f"{refund.outcome}/{void.outcome}"

    define(
        "inventory.undo",
        persistent(
            Envelope,
            lambda env, cid: rt.inventory.release(ReleaseInventory(order_id=env.key), cid, confirm=True),
            step="release_inventory",
        ),
        **quiet,
    )
    define("payment.undo", persistent(Envelope, undo_payment, step="void_payment"), **quiet)
    define(
        "shipping.undo",
        persistent(
            Envelope,
            lambda env, cid: rt.shipping.cancel(CancelShipment(order_id=env.key), cid, confirm=True),
            step="cancel_shipment",
        ),
        **quiet,
    )

    # --- extensions: consumers outside the saga, each on its own queue (app/extensions.py) ---
    def extension_task(ext: Extension) -> Callable[..., Any]:
        db = rt.databases[ext.name]

        def run(self: Task, body: Any) -> bool:
            env = parse(self, Envelope, body)
            try:
                return ext.receive(db, env)
            except NotSubscribed as exc:  # sent by hand, or a replay to the wrong consumer
                dead_letter(self, body, str(exc), exc)
            except TRANSIENT as exc:
                retry_or_dead_letter(self, body, exc, persistent=True, give_up=lambda _reason: None)

        return run

    for ext in rt.extensions.values():
        define(ext.task, extension_task(ext), **quiet)
