"""Nothing is stranded: events the relay could not publish are swept out later."""

from __future__ import annotations

import threading
from typing import Any

from kombu.exceptions import OperationalError

import app
from app.api import System
from app.operations.audit import audit
from app.persistence.outbox import Publisher


class BrokerOutage:
    """Fails the first ``failures`` publishes, as a broker that is briefly unreachable."""

    def __init__(self, inner: Publisher, failures: int) -> None:
        self.inner = inner
        self.left = failures
        self.refused = 0
        self.lock = threading.Lock()

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        with self.lock:
            if self.left > 0:
                self.left -= 1
                self.refused += 1
                raise OperationalError("connection refused")
        self.inner.send(task, body, message_id=message_id, correlation_id=correlation_id)


def test_orders_finish_although_their_events_were_not_published_at_commit(api: System) -> None:
    outage = BrokerOutage(api.runtime.relay.publisher, failures=6)
    api.runtime.relay.publisher = outage
    ids = [app.place_order("c", [{"sku": "MUG-01", "qty": 1}]) for _ in range(3)]
    ids.append(app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_declined"))
    views = [app.wait_for_order(order_id, timeout=60) for order_id in ids]
    assert [v.status for v in views] == ["COMPLETED"] * 3 + ["CANCELLED"]
    assert outage.refused == 6
    report = audit(api.runtime, settle=10)
    assert report.clean, report.violations
