"""Event versions on the embedded system: a log written in OrderPlaced v1 (a producer that
writes v1 while consumers are upgraded, ``CHECKOUT_EMIT_VERSIONS=OrderPlaced=1``) is read by
every consumer of v2, replayed, and rebuilt into the projection a v2 log gives; an event
newer than the consumers read waits as a dead letter until they are upgraded, then is
redriven and handled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

import app
import app.api
from app.api import System
from app.domain.events import OrderPlaced
from app.operations.audit import audit
from app.operations.dlq import DeadLetterOps
from app.operations.replay import Selection, plan_replay, rebuild_orders, rebuilt, send
from app.persistence.db import UnitOfWork
from app.services.order import service as order_service
from config.settings import Settings
from tests.conftest import purge_memory_broker, wait_until
from tests.support.upgrade import OrderPlacedV3, read_v3

pytestmark = pytest.mark.timeout(180)

#: The task that reads OrderPlaced, per saga mode (one of them, in choreography).
READS_PLACED = {"orchestration": "order.start", "choreography": "shipping.join"}


@pytest.fixture
def writes_v1(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """An embedded system whose order service writes OrderPlaced as v1, as v1 code did."""
    purge_memory_broker()
    system = System(settings.model_copy(update={"emit_versions": "OrderPlaced=1"})).start()
    monkeypatch.setattr(app.api, "_system", system)
    yield system
    system.stop()
    purge_memory_broker()


def placed_log(system: System) -> list[tuple[int, dict[str, Any]]]:
    return [
        (env.version, env.payload) for env in system.runtime.databases["order"].log() if env.event_type == "OrderPlaced"
    ]


def rebuilt_rows(system: System) -> list[dict[str, Any]]:
    """The rebuild's projection (checked consistent with the live one), without its time."""
    report = rebuild_orders(system.runtime.databases)
    assert report.consistent and report.orders == 3, report.differences
    query = select(*(c for c in rebuilt.c if c.name != "rebuilt_at")).order_by(rebuilt.c.order_id)
    return [dict(r._mapping) for r in system.runtime.databases["order"].query(lambda c: c.execute(query).all())]


def test_a_v1_log_is_read_by_v2_consumers_replayed_and_rebuilt_as_a_v2_log(writes_v1: System, saga_mode: str) -> None:
    rt = writes_v1.runtime
    ok = app.place_order("c1", [{"sku": "MUG-01", "qty": 2}, {"sku": "TEE-01", "qty": 1}])
    declined = app.place_order("c2", [{"sku": "TEE-01", "qty": 1}], payment_token="tok_declined")
    out_of_stock = app.place_order("c3", [{"sku": "POSTER-01", "qty": 26}])
    # every consumer of OrderPlaced (order.start; in choreography inventory, payment, shipping) read v1
    assert app.wait_for_order(ok, timeout=30).status == "COMPLETED"
    assert app.wait_for_order(declined, timeout=30).status == "CANCELLED"
    assert app.wait_for_order(out_of_stock, timeout=30).status == "CANCELLED"
    wait_until(lambda: audit(rt).clean, timeout=30, what="every event to reach its order")
    logged = placed_log(writes_v1)
    assert [version for version, _ in logged] == [1, 1, 1]
    assert all("unit_price_cents" not in line for _, payload in logged for line in payload["lines"])
    from_v1 = rebuilt_rows(writes_v1)

    # replayed as written (v1) to a consumer: read, not dead-lettered, changing nothing
    plan = plan_replay(rt.databases, Selection(types=("OrderPlaced",)), READS_PLACED[saga_mode], rt.subscriptions)
    assert send(plan, rt.relay.publisher) == {"OrderPlaced": 3}
    assert writes_v1.workers.wait_idle(timeout=30)
    assert DeadLetterOps(rt).letters() == []
    assert [app.get_order(oid).status for oid in (ok, declined, out_of_stock)] == [
        "COMPLETED",
        "CANCELLED",
        "CANCELLED",
    ]

    # the same log as v2 code writes it: the rebuild gives the same projection
    def as_v2(uow: UnitOfWork) -> None:
        events = uow.tables.events
        for env in rt.databases["order"].log():
            if env.event_type == "OrderPlaced":
                lifted = env.upcast()
                values = {"version": lifted.version, "payload": lifted.payload}
                uow.conn.execute(update(events).where(events.c.event_id == env.event_id).values(**values))

    rt.databases["order"].run(as_v2)
    assert [version for version, _ in placed_log(writes_v1)] == [2, 2, 2]
    assert rebuilt_rows(writes_v1) == from_v1
    prices = {
        line["sku"]: line["unit_price_cents"] for _, payload in placed_log(writes_v1) for line in payload["lines"]
    }
    assert prices == {"MUG-01": 1299, "TEE-01": 2499, "POSTER-01": 1999}  # proven by each v1 total


@pytest.mark.parametrize("saga_mode", ["orchestration"])  # the saga's start is order.start
def test_an_event_newer_than_its_consumer_waits_as_a_dead_letter_until_the_consumer_is_upgraded(
    api: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = api.runtime
    ops = DeadLetterOps(rt)
    newer = pytest.MonkeyPatch()
    newer.setattr(order_service, "OrderPlaced", OrderPlacedV3)  # a producer already writing v3
    try:
        order_id = app.place_order("c", [{"sku": "LAMP-01", "qty": 1}])
    finally:
        newer.undo()
    (letter,) = wait_until(lambda: ops.letters(), timeout=30, what="the v3 OrderPlaced dead-lettered")
    assert (letter.task, letter.order_id, letter.attempts) == ("order.start", order_id, 1)
    assert letter.reason == (
        "unreadable event: OrderPlaced v3 is newer than this worker reads (up to v2): "
        "upgrade the consumer, then redrive"
    )
    assert app.get_order(order_id).status == "PENDING"  # nothing half-done: the saga has not started

    read_v3(monkeypatch)  # the consumer is upgraded
    ops.redrive(letter.id)
    assert app.wait_for_order(order_id, timeout=30).status == "COMPLETED"
    assert ops.letters() == []
    assert OrderPlaced.VERSION == 2  # the upgrade is the test's own
