"""The order's projection rules, as pure functions: what each event says about the saga.

Which event reports which step is the saga definition's (:attr:`app.domain.saga.Saga.step_events`);
these rules apply it — live, as :meth:`SagaMemory.record` learns from each event, and to a
whole log, as :func:`fold` rebuilds an order from its events (``python -m app replay``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.domain.events import FAILURE_EVENTS, REGISTRY, Envelope
from app.domain.saga import CHECKOUT, Saga
from app.domain.states import OrderStatus, StepOutcome

#: What an event says of a step: the step (or compensation) and its outcome.
StepReport = tuple[str, StepOutcome]


def _split(saga: Saga) -> tuple[dict[str, StepReport], dict[str, StepReport]]:
    reports = saga.step_events
    own = {event: report for event, report in reports.items() if _service(event) == "order"}
    return {event: report for event, report in reports.items() if event not in own}, own


def _service(event_type: str) -> str | None:
    cls = REGISTRY.get(event_type)
    return cls.SERVICE if cls is not None else None


#: What each of the other services' events says about a step of the saga (for the order's
#: view of its saga), and what the order's own events say (for the timeline only).
STEP_EVENTS, OWN_STEP_EVENTS = _split(CHECKOUT)


def step_status(env: Envelope, saga: Saga = CHECKOUT) -> StepReport | None:
    """The step another service's event reports, and how it went (None: it reports none)."""
    failing = saga.steps_failing_with(env.event_type)
    if len(failing) > 1:  # several steps fail with it (PaymentFailed): the event names its step
        return (str(env.payload.get("step") or failing[0]), StepOutcome.FAILED)
    found = saga.step_events.get(env.event_type)
    if found is None or _service(env.event_type) == "order":
        return None
    return found


def timeline_step(env: Envelope, saga: Saga = CHECKOUT) -> StepReport | None:
    """The step any event of the order's story reports (the order's own events too)."""
    found = step_status(env, saga)
    if found is not None:
        return found
    return saga.step_events.get(env.event_type) if _service(env.event_type) == "order" else None


def known_step(event_type: str, saga: Saga = CHECKOUT) -> tuple[str | None, StepOutcome | None]:
    """The step an event type alone names (for timeline rows written before the step was kept)."""
    return saga.step_events.get(event_type) or (None, None)


def undone_by(saga: Saga = CHECKOUT) -> tuple[str, ...]:
    """Choreography: what each service confirms once it has undone its part of a failed saga
    — the last of its compensations it runs, newest first (payment refunds, then voids) —
    a compensation that had nothing to undo confirming all the same."""
    last: dict[str, str] = {}
    for compensation in saga.compensations:
        last[compensation.service] = compensation.name
    return tuple(last.values())


UNDONE_BY = undone_by(CHECKOUT)


def all_undone(steps: Mapping[str, str], saga: Saga = CHECKOUT) -> bool:
    return all(steps.get(step) == StepOutcome.DONE for step in undone_by(saga))


def learn(env: Envelope, steps: Mapping[str, str], failure_reason: str | None, saga: Saga = CHECKOUT) -> dict[str, Any]:
    """What another service's event changes in the order's memory of its saga: the step it
    reports takes that outcome, and the first failure event gives the failure reason.
    Returns only the columns that change. :meth:`SagaMemory.record` applies it live;
    :func:`fold` applies it to a whole log."""
    values: dict[str, Any] = {}
    found = step_status(env, saga)
    if found is not None:
        step, status = found
        values["steps"] = {**steps, step: status}
    if env.event_type in FAILURE_EVENTS and failure_reason is None:
        values["failure_reason"] = str(env.payload["reason"])
    return values


@dataclass(frozen=True)
class OrderFacts:
    """An order as its events tell it (see :func:`fold`)."""

    order_id: str
    customer_id: str | None = None  # None: no OrderPlaced in the log
    status: OrderStatus = OrderStatus.PENDING
    reason: str | None = None
    total_cents: int | None = None
    currency: str | None = None
    steps: dict[str, StepOutcome] = field(default_factory=dict)
    failure_reason: str | None = None
    event_ids: frozenset[str] = frozenset()


def fold(order_id: str, events: list[Envelope], saga: Saga = CHECKOUT) -> OrderFacts:
    """The order's projection rebuilt from every service's events about it, oldest first.

    Each event is read in the latest version of its type (``Envelope.upcast``), whatever
    version the log holds. The order's own events carry its decisions: OrderPlaced (customer and totals),
    OrderCompleted and OrderCancelled (status and reason; the service writes each in the
    transaction that changes the status). Every other event goes through :func:`learn`, as
    :meth:`SagaMemory.record` does live; an event seen twice counts once.

    What only commands tell the service is not here: parking (NEEDS_ATTENTION and its
    ``attention``), the saga's bookkeeping (``saga_state``, ``failed_step``,
    ``compensated``, dispatch times, re-drives) and a failure reason that came with a
    command (an operator's compensation, the sweeper's ``deadline_exceeded``, a step of the
    order's own that gave up) — until the OrderCancelled that carries it.
    """
    facts = OrderFacts(order_id)
    for written in events:
        if written.event_id in facts.event_ids:
            continue
        env = written.upcast()  # a log keeps old versions as written: read each as the latest
        changes: dict[str, Any] = {"event_ids": facts.event_ids | {env.event_id}}
        payload = env.payload
        if env.event_type == "OrderPlaced":
            changes.update(
                customer_id=str(payload["customer_id"]),
                total_cents=int(payload["total_cents"]),
                currency=str(payload["currency"]),
            )
        elif env.event_type == "OrderCompleted":
            changes["status"] = OrderStatus.COMPLETED
        elif env.event_type == "OrderCancelled":
            changes.update(status=OrderStatus.CANCELLED, reason=str(payload["reason"]))
        else:
            changes.update(learn(env, facts.steps, facts.failure_reason, saga))
        facts = replace(facts, **changes)
    return facts
