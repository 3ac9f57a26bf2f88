"""Who handles what: each event type and the tasks it triggers. One table per saga mode;
the choreography one is derived from the saga definition (:func:`choreography_table`).

The relay (``app/persistence/outbox.py``) publishes every event, after the transaction that wrote it
commits, to each task listed for its type. Consumers are idempotent by event id (or, for
a saga step, by ``(order, step)``).

* Orchestration: a Celery canvas drives the steps; events only tell the order service how
  its saga went, and the order's own events finish the stock's story.
* Choreography: no canvas. Inventory and payment act on ``OrderPlaced``; shipping joins
  ``OrderPlaced``, ``InventoryReserved`` and ``PaymentAuthorized`` in its own table and
  schedules once it has all three; payment captures on ``ShipmentScheduled``; the order
  completes on ``PaymentCaptured``. A failure event (or ``OrderCancelled``) makes every
  service undo its own part; the order service projects status and reason from events.
"""

from __future__ import annotations

from app.domain.events import FAILURE_EVENTS, REGISTRY
from app.domain.saga import CHECKOUT, Saga, Step

ORCHESTRATION = "orchestration"
CHOREOGRAPHY = "choreography"
MODES = (ORCHESTRATION, CHOREOGRAPHY)

#: The order service follows every other service's events to keep the saga's memory.
_ORDER_FOLLOWS = ("order.record",)

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "OrderPlaced": ("order.start",),
    "OrderCompleted": ("inventory.commit",),
    "OrderCancelled": ("inventory.release_on_cancel",),
    **{name: _ORDER_FOLLOWS for name, cls in REGISTRY.items() if cls.SERVICE != "order"},
}

#: The event a saga starts on, which carries the order's details.
START_EVENT = "OrderPlaced"


def undo_tasks(saga: Saga) -> tuple[str, ...]:
    """Each service's own compensation task in choreography (``<service>.undo``), run on any
    failure event and on OrderCancelled: one per service that has a step to undo, in step order."""
    services = [step.service for step in saga.steps if step.compensation is not None]
    return tuple(f"{service}.undo" for service in dict.fromkeys(services))


def choreography_table(saga: Saga) -> dict[str, tuple[str, ...]]:
    """The choreography subscriptions, from the saga definition. Each step's ``reaction``
    runs on the events that say the phase before it is done: the first phase on
    :data:`START_EVENT`; a join (the step after a parallel phase) on the start event, for the
    order's details, and on every branch's done event; the epilogue on the last step's done
    events. The order service follows every other service's events; a failure event makes
    every service undo its own part, and OrderCancelled too (the stock's release first)."""
    undo = undo_tasks(saga)
    table: dict[str, list[str]] = {
        name: list(_ORDER_FOLLOWS) for name, cls in REGISTRY.items() if cls.SERVICE != "order"
    }
    for name in sorted(FAILURE_EVENTS):
        table[name] = [*_ORDER_FOLLOWS, *undo]
    previous: tuple[Step, ...] = ()
    for phase in saga.phases:
        if not previous:
            triggers = [START_EVENT]
        else:
            triggers = [START_EVENT] if len(previous) > 1 else []
            triggers += [event for step in previous for event in step.done_events]
        for step in phase:
            if step.reaction is not None:
                for event in triggers:
                    table.setdefault(event, []).append(step.reaction)
        previous = phase
    for step in saga.epilogue:
        for event in saga.steps[-1].done_events:
            table.setdefault(event, []).append(step.task)
    table["OrderCancelled"] = ["inventory.release_on_cancel", *undo]
    return {event: tuple(tasks) for event, tasks in table.items()}


def consumer_steps(saga: Saga) -> dict[str, tuple[str, ...]]:
    """The consumers that run a saga step (idempotent by ``(order, step)`` in their service's
    steps table, with no inbox): consumer -> the steps whose record shows it has acted — its
    own step, or the compensation that undid (or prevented) it. Once one of them is recorded
    for an order, the consumer needs none of the order's events again (the sweeper re-sends an
    event only to the consumers that show no sign of it). Every other consumer keeps an inbox
    of the events it handled. A service's undo shows by the compensation of its first step,
    which it runs last (a payment is refunded first, voided last)."""
    found: dict[str, tuple[str, ...]] = {}
    for step in saga.steps:
        if step.reaction is not None:
            undone = (step.compensation.name,) if step.compensation is not None else ()
            found[step.reaction] = (step.name, *undone)
    for task in undo_tasks(saga):
        service = task.split(".", 1)[0]
        first = next(s for s in saga.steps if s.service == service and s.compensation is not None)
        assert first.compensation is not None
        found[task] = (first.compensation.name,)
    return found


#: Each service's own compensation, run on any failure event and on OrderCancelled.
UNDO_OWN_PART = undo_tasks(CHECKOUT)
CHOREOGRAPHY_SUBSCRIPTIONS: dict[str, tuple[str, ...]] = choreography_table(CHECKOUT)
CONSUMER_STEPS: dict[str, tuple[str, ...]] = consumer_steps(CHECKOUT)

TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    ORCHESTRATION: SUBSCRIPTIONS,
    CHOREOGRAPHY: CHOREOGRAPHY_SUBSCRIPTIONS,
}


def subscriptions(mode: str = ORCHESTRATION) -> dict[str, tuple[str, ...]]:
    """The subscription table of a saga mode."""
    try:
        return TABLES[mode]
    except KeyError:
        raise ValueError(f"unknown saga mode {mode!r}; one of: {', '.join(MODES)}") from None


def consumers_of(event_type: str, mode: str = ORCHESTRATION) -> tuple[str, ...]:
    return subscriptions(mode).get(event_type, ())
