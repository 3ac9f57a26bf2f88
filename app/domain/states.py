"""The states an order and its saga go through, by name: what is stored, sent and printed.

Each is a :class:`enum.StrEnum` whose values are the strings in the tables, in the messages
and on the screen: a member compares equal to its value, ``str()`` and ``json.dumps`` of it
give the value, and a value read back from a table is turned into its member with
``OrderStatus(value)``. These values are stored: renaming a member is free, changing a value
is a data migration.
"""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    """Where an order stands (``order_orders.status``)."""

    PENDING = "PENDING"  # its saga is running
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    #: not finished, and not moving on its own: a compensation gave up; an operator must act
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


#: Finished: nothing changes the order any more.
TERMINAL: frozenset[OrderStatus] = frozenset({OrderStatus.COMPLETED, OrderStatus.CANCELLED})

#: Still in flight (possibly parked): a cancellation may still land.
OPEN: frozenset[OrderStatus] = frozenset({OrderStatus.PENDING, OrderStatus.NEEDS_ATTENTION})


class SagaState(StrEnum):
    """Which way the order's saga is going (``order_orders.saga_state``)."""

    RUNNING = "RUNNING"  # forward, step by step
    COMPENSATING = "COMPENSATING"  # a step failed: undoing, newest first
    DONE = "DONE"  # over: the order is COMPLETED or CANCELLED


class StepOutcome(StrEnum):
    """How a saga step or compensation went: what a service records of it (``<service>_steps``),
    what an event says of it (the order's ``steps`` and its timeline), and what a step's task
    returns."""

    DONE = "done"  # it took effect
    FAILED = "failed"  # a business failure (or its retries ran out)
    NOOP = "noop"  # a compensation with nothing to undo
    PREVENTED = "prevented"  # compensated before it ran: it must never take effect


#: The outcomes after which the saga goes on (a forward step that took effect, or a
#: compensation that did or had nothing to do).
SUCCEEDED: frozenset[StepOutcome] = frozenset({StepOutcome.DONE, StepOutcome.NOOP})


class Verdict(StrEnum):
    """What the order knows of a failure a saga's error callback reports
    (:meth:`app.services.order.SagaMemory.review_failure`)."""

    CONFIRMED = "confirmed"  # borne out (or asked for): compensate
    CONTRADICTED = "contradicted"  # the step is known to have succeeded: do not
    UNCONFIRMED = "unconfirmed"  # nothing says so yet: wait for the failure event


class Move(StrEnum):
    """What the coordinator did once a failure review did not stop it, or when it re-drove
    an overdue saga (:class:`app.services.order.Coordinator`)."""

    COMPENSATING = "compensating"  # sent the compensations
    NOT_DUE = "not due"  # found them sent already, or the order over
    RESUMED = "resumed"  # re-drive: sent the forward path again (or, in choreography, nothing)
    COMPENSATED = "compensated"  # re-drive: sent the compensations
