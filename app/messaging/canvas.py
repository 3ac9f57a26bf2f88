"""Build the Celery canvas of a saga from its definition (``app/domain/saga.py``).

For the checkout this is::

    chord([inventory.reserve, payment.authorize], shipping.schedule) | payment.capture | order.complete

Every task gets one argument (its command) as an immutable signature, so nothing flows
between steps but the order id — the database is the memory, the canvas the routing slip.

Failure: every step outside a chord header carries an error callback
``order.compensate({"order_id", "failed_step"})``. It takes one argument, so Celery
publishes it to the order queue rather than running it inline in the failing worker
(errbacks of more than one argument run inline). A chord header has no error callback of
its own (``task_allow_error_cb_on_chord_header`` stays off): when a header task fails, the
chord's body fails with ChordError *after every header task has finished*, and the
body's callback fires once — so compensation never races the other parallel branch.
The compensations then run as a chain, newest first, ending in ``order.cancel``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature
from celery.exceptions import ImproperlyConfigured

from app.domain.commands import CompensateOrder
from app.domain.saga import Compensation, Saga, Step


def check_canvas_settings(conf: Any) -> None:
    """Refuse Celery settings under which the saga's error callbacks would misfire.

    The canvas relies on the chord body's error callback, which Celery fires once, after
    every header task has finished. With ``task_allow_error_cb_on_chord_header`` on,
    Celery would also call it for each failed header task, while the other branch may
    still be running.
    """
    if conf.task_allow_error_cb_on_chord_header:
        raise ImproperlyConfigured(
            "task_allow_error_cb_on_chord_header must be False: the saga compensates from the chord "
            "body's error callback, once both parallel branches have finished"
        )
    if not conf.task_acks_late or not conf.task_reject_on_worker_lost:
        raise ImproperlyConfigured(
            "task_acks_late and task_reject_on_worker_lost must be True: steps are idempotent so that a "
            "message is acknowledged only after its step ran"
        )


def _sig(app: Celery, task: str, body: dict[str, Any], **options: Any) -> Signature:
    return app.signature(task, args=(body,), immutable=True, **options)


def unlock_retries(give_up_seconds: float, retry_interval: float) -> int:
    """Polls of a chord's ``celery.chord_unlock`` before it gives up (database result
    backend): each waits at least ``retry_interval``, so it polls for at least twice the
    time after which the sweeper gives up on a lost saga. Without a bound, a chord whose
    header message was lost polls for ever once the sweeper has compensated the saga.
    Giving up fails the chord's body, whose error callback reports the join step failed:
    a no-op on an order that is over, and on a live one (no step failed) only a report
    kept until a failure confirms it (:meth:`SagaMemory.review_failure`)."""
    return math.ceil(2 * give_up_seconds / retry_interval)


def build_saga(
    app: Celery,
    saga: Saga,
    order_id: str,
    commands: Mapping[str, dict[str, Any]],
    done: frozenset[str] = frozenset(),
    chord_retries: int | None = None,
) -> Signature:
    """The forward path of one saga, with its error callbacks — from the first phase with a
    step not ``done`` (a re-driven saga resumes there; done steps would be no-ops anyway).
    ``chord_retries`` bounds each chord's unlock polls (:func:`unlock_retries`)."""

    def step_sig(step: Step) -> Signature:
        return _sig(app, step.task, commands[step.name], task_id=f"{order_id}.{step.name}")

    def guarded(step: Step) -> Signature:
        errback = _sig(
            app,
            saga.compensate_task,
            CompensateOrder(order_id=order_id, failed_step=step.name).model_dump(mode="json", exclude_none=True),
        )
        return step_sig(step).on_error(errback)

    parts: list[Signature] = []
    phases = list(saga.phases)
    index = 0
    while index < len(phases) - 1 and all(step.name in done for step in phases[index]):
        index += 1
    while index < len(phases):
        phase = phases[index]
        if len(phase) == 1:
            parts.append(guarded(phase[0]))
            index += 1
            continue
        join = phases[index + 1][0]
        joined = chord(group([step_sig(step) for step in phase], app=app), guarded(join), app=app)
        parts.append(joined if chord_retries is None else joined.set(max_retries=chord_retries))
        index += 2
    return parts[0] if len(parts) == 1 else chain(*parts, app=app)


def build_compensation(
    app: Celery, saga: Saga, order_id: str, compensations: tuple[Compensation, ...], cancel_command: dict[str, Any]
) -> Signature:
    """Compensations newest first, then the order's cancellation, as one chain."""
    body = {"order_id": order_id}
    links = [_sig(app, comp.task, body) for comp in compensations]
    links.append(_sig(app, saga.cancel_task, cancel_command))
    return chain(*links, app=app)


class CanvasDispatcher:
    """The saga's dispatcher over Celery (:class:`app.domain.ports.SagaDispatcher`): each
    plan of the order's coordinator goes out as the canvas built from the definition the
    order follows."""

    def __init__(self, app: Celery, chord_retries: int | None = None) -> None:
        self.app = app
        self.chord_retries = chord_retries

    def run_saga(
        self, saga: Saga, order_id: str, commands: Mapping[str, dict[str, Any]], done: frozenset[str] = frozenset()
    ) -> None:
        build_saga(self.app, saga, order_id, commands, done, self.chord_retries).apply_async()

    def run_compensation(
        self, saga: Saga, order_id: str, compensations: tuple[Compensation, ...], cancel_command: dict[str, Any]
    ) -> None:
        build_compensation(self.app, saga, order_id, compensations, cancel_command).apply_async()
