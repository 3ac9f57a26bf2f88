"""At-least-once delivery: every message delivered twice has no second effect."""

from __future__ import annotations

from typing import Any

from celery.result import allow_join_result
from sqlalchemy import func, select

import app
from app.adapters.fake_gateway import ledger
from app.api import System
from app.operations.audit import audit
from app.persistence.outbox import Publisher
from app.services.order import timeline


class Twice:
    """A publisher that sends every event message two times, as a broker may deliver it."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.sent = 0

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        for _ in range(2):
            self.inner.send(task, body, message_id=message_id, correlation_id=correlation_id)
            self.sent += 1


def effects(system: System) -> dict[str, Any]:
    """Everything a duplicate could wrongly change."""
    rt = system.runtime
    payment = rt.databases["payment"]
    return {
        "stock": {sku: vars(level) for sku, level in rt.inventory.levels().items()},
        "gateway": payment.query(
            lambda c: sorted(
                tuple(r) for r in c.execute(select(ledger.c.idempotency_key, ledger.c.outcome, ledger.c.amount_cents))
            )
        ),
        "events": {s: len(db.log()) for s, db in rt.databases.items()},
        "timeline": rt.databases["order"].query(
            lambda c: c.execute(select(func.count()).select_from(timeline)).scalar()
        ),
    }


def test_every_event_delivered_twice(api: System) -> None:
    twice = Twice(api.runtime.relay.publisher)
    api.runtime.relay.publisher = twice
    cases = [("tok_ok", None, "COMPLETED"), ("tok_declined", None, "CANCELLED"), ("tok_ok", "AQ", "CANCELLED")]
    ids = [
        app.place_order(
            "c", [{"sku": "MUG-01", "qty": 1}], payment_token=token, ship_to={"country": country} if country else None
        )
        for token, country, _ in cases
    ]
    for order_id, (_, _, status) in zip(ids, cases, strict=True):
        view = app.wait_for_order(order_id, timeout=60)
        assert view.status == status
        types = [e.type for e in view.events]
        assert len(types) == len(set(types)), f"an event was recorded twice: {types}"
    assert twice.sent > 0
    report = audit(api.runtime, settle=10)
    assert report.clean, report.violations


def test_every_step_and_compensation_message_delivered_again(api: System) -> None:
    rt = api.runtime
    completed = app.place_order("c", [{"sku": "MUG-01", "qty": 2}])
    cancelled = app.place_order("c", [{"sku": "TEE-01", "qty": 1}], ship_to={"country": "AQ"})
    for order_id in (completed, cancelled):
        app.wait_for_order(order_id, timeout=60)
    assert audit(rt, settle=10).clean
    before = effects(api)

    # the saga's own messages, sent again: two copies at once of each forward step ...
    results = []
    for order_id in (completed, cancelled):
        commands = rt.order.step_commands(order_id)
        for step in rt.saga.steps:
            for _ in range(2):
                results.append(rt.celery.send_task(step.task, args=(commands[step.name],)))
    # ... and of each compensation that ran for the cancelled order
    for comp in rt.saga.compensations_through("schedule_shipping"):
        for _ in range(2):
            results.append(rt.celery.send_task(comp.task, args=({"order_id": cancelled},)))
    with allow_join_result():
        for result in results:
            result.get(timeout=30, propagate=False)
        assert all(r.state in {"SUCCESS", "FAILURE"} for r in results)

    assert effects(api) == before
    assert app.get_order(completed).status == "COMPLETED"
    assert app.get_order(cancelled).status == "CANCELLED"
    assert audit(rt, settle=5).clean
