"""How a saga step or compensation runs once, whatever happens to its message.

Shared by the services so that each spells out only what its step does. Calls to
external systems always happen outside a database transaction (they may be slow, and
the external system may keep its books in the same database).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from app.domain.errors import BusinessFailure
from app.domain.events import Envelope, Event, OrderPlaced
from app.domain.states import StepOutcome
from app.persistence.db import Database, StepRecord, UnitOfWork

R = TypeVar("R")
T = TypeVar("T")

DONE = StepRecord(StepOutcome.DONE)
NOOP = StepRecord(StepOutcome.NOOP)
PREVENTED = StepRecord(StepOutcome.PREVENTED)


def forward_step_with_call(
    db: Database,
    order_id: str,
    step: str,
    *,
    call: Callable[[], R],
    on_success: Callable[[UnitOfWork, R], dict[str, object] | None],
    on_failure: Callable[[UnitOfWork, BusinessFailure], None],
    undo: Callable[[R], None],
    find: Callable[[], R | None],
    causation_id: str | None = None,
) -> StepRecord:
    """A forward step that calls an external system (idempotent by key), then records.

    A step that may have called out is undone whenever its record ends ``prevented`` (it
    was compensated before it recorded), whichever attempt finds it: this one, with what its
    call returned, or a later one — a redelivery after a crash between the call and the
    record — with what ``find`` learns from the external system by the call's idempotency
    key. So a late or crashed step never leaves money or a shipment behind.
    """
    existing = db.run(lambda uow: uow.step(order_id, step))
    if existing is not None:
        if existing.outcome == StepOutcome.PREVENTED and (earlier := find()) is not None:
            undo(earlier)  # idempotent by its own key: finding it undone already is fine
        return existing
    try:
        result = call()
    except BusinessFailure as exc:
        failure = exc

        def record_failure(uow: UnitOfWork) -> StepRecord:
            recorded = uow.step(order_id, step)
            if recorded is not None:
                return recorded
            on_failure(uow, failure)
            return uow.record_step(order_id, step, StepRecord(StepOutcome.FAILED, failure.reason))

        return db.run(record_failure, causation_id=causation_id)

    def record_success(uow: UnitOfWork) -> StepRecord:
        recorded = uow.step(order_id, step)
        if recorded is not None:
            return recorded
        detail = on_success(uow, result)
        return uow.record_step(order_id, step, StepRecord(StepOutcome.DONE, detail=detail))

    record = db.run(record_success, causation_id=causation_id)
    if record.outcome == StepOutcome.PREVENTED:
        undo(result)
    return record


def compensation(
    db: Database,
    order_id: str,
    *,
    forward: str,
    name: str,
    find: Callable[[UnitOfWork], T | None],
    undo: Callable[[UnitOfWork, T], None],
    external: Callable[[T], None] | None = None,
    confirm: Callable[[UnitOfWork], object] | None = None,
    causation_id: str | None = None,
) -> StepRecord:
    """Undo ``forward`` for the order, once.

    If ``forward`` never ran, it is recorded as ``prevented`` (so it can no longer take
    effect) and the compensation is a no-op. ``find`` returns what there is to undo (or
    None); ``external`` undoes it outside (a gateway, a carrier), outside any transaction;
    ``undo`` records it in the service's tables and emits the event. ``confirm`` (given in
    choreography, where the order waits to hear that every service undid its part) emits
    the event for a no-op too, once.
    """

    def noop(uow: UnitOfWork) -> StepRecord:
        if confirm is not None:
            confirm(uow)
        return uow.record_step(order_id, name, NOOP)

    def first(uow: UnitOfWork) -> tuple[StepRecord | None, T | None]:
        recorded = uow.step(order_id, name)
        if recorded is not None:
            return recorded, None
        forward_record = uow.step(order_id, forward)
        if forward_record is None:
            uow.record_step(order_id, forward, PREVENTED)
            return noop(uow), None
        target = find(uow) if forward_record.outcome == StepOutcome.DONE else None
        if target is None:
            return noop(uow), None
        if external is None:
            undo(uow, target)
            return uow.record_step(order_id, name, DONE), None
        return None, target

    record, target = db.run(first, causation_id=causation_id)
    if record is not None:
        return record
    assert external is not None and target is not None
    external(target)

    def second(uow: UnitOfWork) -> StepRecord:
        recorded = uow.step(order_id, name)
        if recorded is not None:
            return recorded
        undo(uow, target)
        return uow.record_step(order_id, name, DONE)

    return db.run(second, causation_id=causation_id)


def give_up(
    db: Database, order_id: str, step: str, reason: str, failure: Event | None, causation_id: str | None = None
) -> StepRecord:
    """A step's retries ran out: record it as failed (once) and emit ``failure``."""

    def work(uow: UnitOfWork) -> StepRecord:
        recorded = uow.step(order_id, step)
        if recorded is not None:
            return recorded
        if failure is not None:
            uow.emit(failure)
        return uow.record_step(order_id, step, StepRecord(StepOutcome.FAILED, reason))

    return db.run(work, causation_id=causation_id)


def placed(env: Envelope) -> OrderPlaced:
    """Choreography: the OrderPlaced a reaction to it decides from (TypeError for any other)."""
    evt = env.open()
    if not isinstance(evt, OrderPlaced):
        raise TypeError(f"expected OrderPlaced, got {env.event_type}")
    return evt
