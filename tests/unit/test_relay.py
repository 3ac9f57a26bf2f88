"""The relay: publish after commit, stamp what was sent, leave the rest to the sweep."""

from __future__ import annotations

from typing import Any

from app.domain.commands import ReserveInventory
from app.domain.values import Line
from app.persistence.outbox import Relay
from tests.conftest import Services


class FlakyPublisher:
    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on = fail_on
        self.calls = 0
        self.sent: list[tuple[str, str]] = []

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError("broker unreachable")
        self.sent.append((task, body["event_type"]))


def reserve(services: Services, order_id: str) -> None:
    services.inventory.reserve(ReserveInventory(order_id=order_id, lines=(Line(sku="MUG-01", qty=1),)))


def test_unsent_events_stay_for_the_sweep(services: Services) -> None:
    publisher = FlakyPublisher(fail_on={2})
    relay = Relay(services.dbs, publisher)
    services.dbs["inventory"].after_commit(relay.publish)
    reserve(services, "o-1")  # published at once
    reserve(services, "o-2")  # the broker is down for this one
    assert publisher.sent == [("order.record", "InventoryReserved")]
    pending = services.dbs["inventory"].unpublished(older_than_seconds=0)
    assert [e.key for e in pending] == ["o-2"]

    assert relay.sweep("inventory", older_than_seconds=0) == 1
    assert publisher.sent == [("order.record", "InventoryReserved")] * 2
    assert services.dbs["inventory"].unpublished(older_than_seconds=0) == []
    assert relay.sweep("inventory", older_than_seconds=0) == 0


def test_sweep_waits_for_the_grace_period(services: Services) -> None:
    publisher = FlakyPublisher(fail_on={1})
    relay = Relay(services.dbs, publisher)
    services.dbs["inventory"].after_commit(relay.publish)
    reserve(services, "o-1")
    assert relay.sweep("inventory", older_than_seconds=3600) == 0  # too fresh: its own relay may still send it
    assert relay.sweep("inventory", older_than_seconds=0) == 1
