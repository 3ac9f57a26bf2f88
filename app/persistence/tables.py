"""The standard tables every service (and every extension) keeps next to its own, all
prefixed with the service name:

* ``<service>_events`` — the service's append-only event log, which is also its outbox:
  an event is written in the same transaction as the state change that produced it and
  published after commit (``published_at`` says when);
* ``<service>_inbox`` — ``(consumer, event_id)`` of every event a consumer has handled,
  written in the consumer's own transaction, so a redelivered event has no second effect;
* ``<service>_steps`` — the recorded outcome of every saga step and compensation, keyed
  by ``(order_id, step)``: a repeated command returns it instead of acting again; with
  how many attempts it took and when the first one started (see :mod:`app.persistence.attempts`);
* ``<service>_dead_letters`` — messages of the service's queue that could not be handled
  (retries exhausted, malformed), with why; see :mod:`app.persistence.deadletters`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, Text


@dataclass(frozen=True)
class StandardTables:
    events: Table
    inbox: Table
    steps: Table
    dead_letters: Table


def standard_tables(service: str, metadata: MetaData) -> StandardTables:
    events = Table(
        f"{service}_events",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("topic", String(128), nullable=False),
        Column("key", String(64), nullable=False, index=True),
        Column("correlation_id", String(64), nullable=False),
        Column("causation_id", String(128)),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("payload", JSON, nullable=False),
        Column("published_at", DateTime(timezone=True), index=True),
        # set on events a saga step or compensation emitted (app/persistence/attempts.py)
        Column("attempts", Integer),
        Column("duration_ms", Integer),
        # the W3C traceparent of the transaction that wrote the event (tracing on), so that
        # its delivery, however late, joins its cause's trace (app/messaging/tracing.py)
        Column("traceparent", String(128)),
    )
    inbox = Table(
        f"{service}_inbox",
        metadata,
        Column("consumer", String(64), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("handled_at", DateTime(timezone=True), nullable=False),
    )
    steps = Table(
        f"{service}_steps",
        metadata,
        Column("order_id", String(64), primary_key=True),
        Column("step", String(64), primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("detail", JSON, nullable=False),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        # how many attempts the step took and when the first one started (None: not known)
        Column("attempts", Integer),
        Column("started_at", DateTime(timezone=True)),
    )
    dead_letters = Table(
        f"{service}_dead_letters",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("message_key", String(255), nullable=False, index=True),
        Column("queue", String(64), nullable=False),
        Column("task", String(128)),
        Column("order_id", String(64), index=True),
        Column("reason", String(255), nullable=False),
        Column("error", Text, nullable=False),
        Column("traceback", Text, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("first_failed_at", DateTime(timezone=True), nullable=False),
        Column("last_failed_at", DateTime(timezone=True), nullable=False),
        Column("status", String(16), nullable=False, index=True),  # DEAD, REDRIVEN, PURGED
        Column("message", JSON, nullable=False),  # how to send it again; see app.persistence.deadletters
    )
    return StandardTables(events, inbox, steps, dead_letters)
