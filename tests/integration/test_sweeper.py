"""Lost messages: the saga sweeper brings every order to an end from its recorded state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select

import app
import app.api
from app.analytics import sales_by_day
from app.api import System
from app.operations.audit import audit
from app.persistence.outbox import Publisher
from app.services.order import orders
from config.settings import SERVICES, Settings
from tests.conftest import purge_memory_broker, wait_until


class Lossy:
    """Acknowledges the first ``lose`` OrderPlaced events and never delivers them, to any of
    their consumers (order.start, or in choreography the services that act on it)."""

    def __init__(self, inner: Publisher, lose: int) -> None:
        self.inner = inner
        self.left = lose
        self.losing: set[str] = set()  # events whose first delivery to each consumer is lost
        self.lost: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        with self.lock:
            event_id = body.get("event_id")
            if body.get("event_type") == "OrderPlaced" and event_id not in self.losing and self.left > 0:
                self.left -= 1
                self.losing.add(event_id)
            if event_id in self.losing and (event_id, task) not in self.lost:
                self.lost.add((event_id, task))
                return
        self.inner.send(task, body, message_id=message_id, correlation_id=correlation_id)


@contextmanager
def swept_system(settings: Settings, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Iterator[System]:
    """The embedded system with a short saga deadline and a sweep every half second (and
    ``overrides``), as the process's system; stopped, and the broker emptied, on exit."""
    purge_memory_broker()
    update = {"saga_deadline_seconds": 1.5, "saga_give_up_seconds": 60, "sweep_interval_seconds": 0.5, **overrides}
    system = System(settings.model_copy(update=update)).start()
    monkeypatch.setattr(app.api, "_system", system)
    try:
        yield system
    finally:
        system.stop()
        purge_memory_broker()


@pytest.fixture
def swept(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    with swept_system(settings, monkeypatch) as system:
        yield system


def redrives(system: System) -> dict[str, int]:
    db = system.runtime.databases["order"]
    return dict(db.query(lambda c: c.execute(select(orders.c.order_id, orders.c.redrives)).all()))  # type: ignore[arg-type]


def test_lost_messages_are_recovered_by_the_sweeper(swept: System) -> None:
    swept.runtime.relay.publisher = Lossy(swept.runtime.relay.publisher, lose=4)
    tokens = ["tok_ok", "tok_declined", "tok_ok", "tok_ok", "tok_flaky"] * 4
    ids = [app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token=t) for t in tokens]
    # and a purge of every queue while the sagas run: whatever was queued is gone
    for _ in range(3):
        purge_memory_broker()
    views = [app.wait_for_order(order_id, timeout=60) for order_id in ids]
    for view, token in zip(views, tokens, strict=True):
        assert view.status == ("CANCELLED" if token == "tok_declined" else "COMPLETED"), view
    assert sum(1 for n in redrives(swept).values() if n > 0) >= 4
    report = audit(swept.runtime, settle=15)
    assert report.clean, report.violations


def test_sweep_command_redrives_once(swept: System) -> None:
    swept.runtime.relay.publisher = Lossy(swept.runtime.relay.publisher, lose=1)
    for sweeper in swept.workers.sweepers:  # only the command sweeps in this test
        sweeper.stop()
    order_id = app.place_order("c", [{"sku": "BOOK-01", "qty": 1}])
    assert app.get_order(order_id).status == "PENDING"
    from app.operations.sweeper import redrive_overdue

    wait_until(lambda: order_id in swept.runtime.order.overdue(), timeout=10, what="the deadline to pass")
    first = redrive_overdue(swept.runtime, swept.runtime.celery)
    assert first.resumed == [order_id] and first.compensated == []
    assert redrive_overdue(swept.runtime, swept.runtime.celery).resumed == []  # deadline pushed out
    assert app.wait_for_order(order_id, timeout=30).status == "COMPLETED"
    assert all(q for q in SERVICES)


def test_sweeping_with_an_extension_sends_it_nothing_it_cannot_take(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension defines one task, ``<name>.handle``. Recovery re-sends only missing
    deliveries to their consumers, so the sweeps that bring lost orders back never ask the
    extension for a task it lacks (an unknown task would be a dead letter in its database on
    every round), and the extension still ends up with every order."""
    with swept_system(settings, monkeypatch, extensions="analytics") as system:
        assert "analytics" in system.runtime.databases
        system.runtime.relay.publisher = Lossy(system.runtime.relay.publisher, lose=3)
        tokens = ["tok_ok", "tok_declined", "tok_ok"] * 2
        ids = [app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token=t) for t in tokens]
        for order_id, token in zip(ids, tokens, strict=True):
            expected = "CANCELLED" if token == "tok_declined" else "COMPLETED"
            assert app.wait_for_order(order_id, timeout=60).status == expected
        assert sum(1 for n in redrives(system).values() if n > 0) >= 3  # the sweeps ran and did re-drive
        analytics = system.runtime.databases["analytics"]
        wait_until(
            lambda: sum(d.completed + d.cancelled for d in sales_by_day(analytics)) == len(ids),
            timeout=30,
            what="the extension to record every ended order",
        )
        assert system.runtime.dead_letters.find(status=None) == []
