"""The task toolkit: how a message becomes one call of a service, and what happens when
that call cannot finish — retries with backoff, dead letters, and a saga parked for an
operator. Every task module (``order``, ``inventory``, ``payment``, ``shipping``,
``extensions``) builds its tasks from these.

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
from typing import Any, NoReturn, Protocol, TypeVar

from celery import Celery, Task
from celery.app.task import X_DEATH_HEADERS
from celery.exceptions import Ignore, Reject, Retry
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.domain.commands import Command, ParkOrder
from app.domain.errors import OrderNotFound, StepFailed, TransientFailure
from app.domain.events import Envelope, UnreadableEvent
from app.domain.saga import Saga
from app.domain.states import StepOutcome
from app.messaging import BrokerUnreachable
from app.persistence import attempts
from app.persistence.db import StepRecord
from app.persistence.deadletters import DeadLetterStore
from config.celery import retry_countdown
from config.settings import Settings

log = logging.getLogger("checkout.tasks")

M = TypeVar("M", bound=BaseModel)

#: Faults worth retrying. A database that is briefly unreachable or locked is one, and so is
#: a connection pool with no connection free in time (every connection busy under a burst).
TRANSIENT = (TransientFailure, OperationalError, PoolTimeout)
#: What stops a round of periodic work that the next round simply does again: the broker or a
#: database out of reach.
UNREACHABLE = (*TRANSIENT, BrokerUnreachable)

#: Compensations and event consumers must finish: they retry this many times more.
PERSISTENT_RETRY_FACTOR = 4

#: Header carrying when a message first failed, kept across retries.
FIRST_FAILURE = "x_first_failure"

#: Header carrying when a step's first attempt started, kept across retries (for the
#: order's story: how long the step took; see app/persistence/attempts.py).
FIRST_ATTEMPT = "x_first_attempt"

#: Headers the broker puts on a delivery — RabbitMQ's dead-letter history, a quorum queue's
#: delivery count — and that must not travel on a message sent again: RabbitMQ's cycle
#: detection holds back or drops a message dead-lettered into a queue its history already
#: names (a retry countdown through the delayed-delivery queues an earlier retry passed).
BROKER_HEADERS = frozenset(X_DEATH_HEADERS | {"x-delivery-count"})

#: How a service runs a step, a compensation or an event: ``(message, message id) -> outcome``.
Handler = Callable[[Any, str], Any]


class GivesUp(Protocol):
    """A service whose saga step can run out of retries: it records the step failed, once,
    and says so (a failure event), so the saga compensates."""

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord: ...


#: The attribute of a task, and of the function it runs, naming the model its message body fits.
BODY_MODEL = "body_model"


def takes(model: type[BaseModel], run: Callable[..., Any]) -> Callable[..., Any]:
    """``run``, marked as taking a message body that fits ``model``."""
    setattr(run, BODY_MODEL, model)
    return run


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


def first_error(exc: ValidationError) -> str:
    """Where and what the first validation error is: ``amount_cents: Input should be ...``."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


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


class TaskKit:
    """Builds the tasks of one Celery app: each defined with :meth:`define` from a handler
    that :meth:`forward`, :meth:`persistent` or :meth:`reaction` wraps."""

    def __init__(self, app: Celery, settings: Settings, dead_letters: DeadLetterStore, saga: Saga) -> None:
        self.app = app
        self.settings = settings
        self.dead_letters = dead_letters
        self.compensations = {c.name for c in saga.compensations}

    def define(self, name: str, fn: Callable[..., Any], *, ignore_result: bool = False) -> None:
        """Register ``fn`` as the task ``name``: a bug in it keeps its message as a dead letter."""
        dead_letter = self.dead_letter

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
        options: dict[str, Any] = {"ignore_result": True} if ignore_result else {}
        # the model its one argument must fit, on the task: its message body's contract
        options[BODY_MODEL] = getattr(fn, BODY_MODEL, None)
        self.app.task(name=name, bind=True, shared=False, throws=(StepFailed,), **options)(guarded)

    def dead_letter(self, task: Task, body: Any, reason: str, exc: BaseException) -> NoReturn:
        """Keep the message in the dead-letter store, then reject it (no requeue)."""
        service = task.name.split(".", 1)[0]
        signature = task.signature_from_request(task.request, retries=0, headers=_headers(task))
        first = _headers(task).get(FIRST_FAILURE)
        self.dead_letters.record(
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
        self, task: Task, body: Any, exc: BaseException, *, persistent: bool, give_up: Callable[[str], object]
    ) -> NoReturn:
        settings = self.settings
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
        self.dead_letter(task, body, f"retries exhausted ({limit}): {reason}", exc)

    def parse(self, task: Task, model: type[M], body: Any) -> M:
        """The message as ``model``, or a dead letter at once. An event's envelope ignores
        metadata it does not know, but its payload must fit the model registered for its
        type and version: an event this code cannot read waits as a dead letter (to be
        redriven once the workers can read it) instead of being half-understood."""
        try:
            message = model.model_validate(body)
        except ValidationError as exc:
            self.dead_letter(task, body, f"invalid {model.__name__}: {first_error(exc)}", exc)
        if isinstance(message, Envelope):
            try:
                message.open()
            except UnreadableEvent as exc:
                self.dead_letter(task, body, f"unreadable event: {exc}", exc)
            except ValidationError as exc:
                kind = f"{message.event_type} version {message.version}"
                self.dead_letter(task, body, f"invalid {kind} payload: {first_error(exc)}", exc)
        return message

    # --- the kinds of task ----------------------------------------------------------

    def run_step(
        self,
        task: Task,
        body: Any,
        step: str,
        order_id: str,
        call: Callable[[], StepRecord | None],
        service: GivesUp,
    ) -> StepRecord | None:
        """Run a saga step (whatever sent it: a canvas or an event) as one attempt: an
        unknown order is a dead letter; a transient failure is retried, and once the retries
        run out the step gives up (its service says so with a failure event)."""
        with _attempt(task, step):
            try:
                return call()
            except OrderNotFound as exc:
                self.dead_letter(task, body, f"unknown order: {exc}", exc)
            except TRANSIENT as exc:
                self.retry_or_dead_letter(
                    task,
                    body,
                    exc,
                    persistent=False,
                    give_up=lambda reason: service.give_up(order_id, step, reason, task.request.id),
                )

    def forward(
        self, step: str, command: type[Command], handle: Callable[[Any, str], StepRecord], service: GivesUp
    ) -> Callable[..., Any]:
        """A saga step sent by the canvas: its outcome goes back to the canvas (``StepFailed``
        stops it, and its error callback compensates)."""

        def run(task: Task, body: Any) -> dict[str, Any]:
            cmd = self.parse(task, command, body)
            record = self.run_step(task, body, step, cmd.order_id, lambda: handle(cmd, task.request.id), service)
            assert record is not None
            if record.outcome in {StepOutcome.FAILED, StepOutcome.PREVENTED}:
                raise StepFailed(step, record.reason or str(record.outcome))
            return {"order_id": cmd.order_id, "step": step, "outcome": record.outcome}

        return takes(command, run)

    def persistent(self, model: type[BaseModel], handle: Handler, *, step: str | None = None) -> Callable[..., Any]:
        """A task that retries long; a compensation (``step`` given) that still cannot
        finish parks its saga as NEEDS_ATTENTION, so it never ends silently."""

        def run(task: Task, body: Any) -> Any:
            message = self.parse(task, model, body)
            timed = _attempt(task, step) if step in self.compensations else nullcontext()
            with timed:
                try:
                    result = handle(message, task.request.id)
                except OrderNotFound as exc:  # well-formed, but about no order of this system
                    self.dead_letter(task, body, f"unknown order: {exc}", exc)
                except TRANSIENT as exc:

                    def park(reason: str) -> None:
                        if step is not None:
                            order_id = str(getattr(message, "order_id", None) or getattr(message, "key", ""))
                            park_body = ParkOrder(order_id=order_id, step=step, reason=reason).model_dump(mode="json")
                            self.app.send_task("order.park", args=(park_body,))

                    self.retry_or_dead_letter(task, body, exc, persistent=True, give_up=park)
            return result.outcome if isinstance(result, StepRecord) else result

        return takes(model, run)

    def reaction(
        self,
        step: str,
        decide: Callable[[Envelope], Command | None],
        handle: Callable[[Any, str], StepRecord],
        service: GivesUp,
    ) -> Callable[..., Any]:
        """A saga step run because of an event: ``decide`` (the service's) turns the event
        into the step's command (None: nothing to do yet). A business failure needs nothing
        more here: the service has said so with a failure event, and every service reacts
        to that."""

        def run(task: Task, body: Any) -> dict[str, Any] | None:
            env = self.parse(task, Envelope, body)

            def decided() -> StepRecord | None:
                try:
                    cmd = decide(env)
                except ValidationError as exc:
                    self.dead_letter(task, body, f"invalid {env.event_type} payload: {first_error(exc)}", exc)
                return None if cmd is None else handle(cmd, task.request.id)

            record = self.run_step(task, body, step, env.key, decided, service)
            if record is None:
                return None
            return {"order_id": env.key, "step": step, "outcome": record.outcome}

        return takes(Envelope, run)
