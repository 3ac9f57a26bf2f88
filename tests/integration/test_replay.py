"""``python -m app replay``: events sent again to a consumer, and the order projection
rebuilt from the logs, on the embedded system (the command runs as a user runs it)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete

import app
from app.api import System
from app.operations.audit import audit
from app.operations.replay import Selection, plan_replay, send
from app.persistence.db import UnitOfWork
from app.services.order import timeline
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
OTHER_SERVICES = ("inventory", "payment", "shipping")

pytestmark = pytest.mark.timeout(180)


def run(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env["CHECKOUT_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Orders:
    system: System
    data_dir: Path
    ok: str
    declined: str
    out_of_stock: str


@pytest.fixture
def settled(api: System) -> Orders:
    """Three finished orders — completed, card declined, out of stock — every event delivered."""
    orders = Orders(
        api,
        api.runtime.settings.data_dir,
        app.place_order("c1", [{"sku": "MUG-01", "qty": 1}]),
        app.place_order("c2", [{"sku": "TEE-01", "qty": 1}], payment_token="tok_declined"),
        app.place_order("c3", [{"sku": "POSTER-01", "qty": 26}]),
    )
    for order_id in (orders.ok, orders.declined, orders.out_of_stock):
        app.wait_for_order(order_id, timeout=30)
    wait_until(lambda: audit(api.runtime).clean, timeout=30, what="every event to reach its order")
    return orders


def story(system: System, order_id: str) -> list[str]:
    return [e.type for e in system.runtime.order.view(order_id).events]


def forget(system: System, order_id: str, types: tuple[str, ...] = ()) -> list[str]:
    """Make ``order.record`` forget the order's events from the other services (or only
    those of ``types``): their timeline rows and its inbox rows go. Returns their types."""
    envs = [
        env
        for service in OTHER_SERVICES
        for env in system.runtime.databases[service].log(order_id)
        if not types or env.event_type in types
    ]
    ids = [env.event_id for env in envs]
    db = system.runtime.databases["order"]
    inbox = db.tables.inbox

    def work(uow: UnitOfWork) -> None:
        uow.conn.execute(delete(timeline).where(timeline.c.order_id == order_id, timeline.c.event_id.in_(ids)))
        uow.conn.execute(delete(inbox).where(inbox.c.consumer == "order.record", inbox.c.event_id.in_(ids)))

    db.run(work)
    return [env.event_type for env in envs]


def test_rebuild_is_consistent_then_shows_a_tampered_order(settled: Orders) -> None:
    done = run("replay", "--rebuild", "orders", data_dir=settled.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("consistent: 3 orders"), done.stdout
    with sqlite3.connect(settled.data_dir / "checkout.db") as db:
        assert db.execute("SELECT COUNT(*) FROM order_orders_rebuilt").fetchone() == (3,)
        db.execute("UPDATE order_orders SET status = 'CANCELLED' WHERE order_id = ?", (settled.ok,))

    tampered = run("replay", "--rebuild", "orders", data_dir=settled.data_dir)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    diff = [line.split() for line in tampered.stdout.splitlines() if settled.ok in line]
    assert diff == [[settled.ok, "status", "CANCELLED", "COMPLETED"]], tampered.stdout
    assert settled.declined not in tampered.stdout and settled.out_of_stock not in tampered.stdout
    assert "1 of 3 orders differ" in tampered.stdout


def test_dry_run_lists_an_orders_events_and_sends_nothing(settled: Orders, saga_mode: str) -> None:
    before = story(settled.system, settled.declined)
    forgotten = forget(settled.system, settled.declined)
    expected = ["InventoryReleased", "InventoryReserved", "PaymentDeclined"]
    if saga_mode == "choreography":
        # every service says it undid its part, even when it had nothing to undo; and the
        # decline may reach inventory before the order does: then nothing is ever reserved
        expected = sorted([*expected, "PaymentVoided", "ShipmentCancelled"])
        if "InventoryReserved" not in forgotten:
            expected.remove("InventoryReserved")
    assert sorted(forgotten) == expected

    done = run("replay", "--order", settled.declined, "--to", "order.record", "--dry-run", data_dir=settled.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith(
        f"dry run (order {settled.declined}): {len(expected)} events would be sent to order.record, 2 skipped"
    )
    listed = [line.split() for line in out.splitlines() if settled.declined in line and line[:4].isdigit()]
    assert [(fields[2], fields[-1]) for fields in listed] == [
        (t, "skip" if t.startswith("Order") else "send") for t in before
    ]
    assert "has handled" not in out  # they were forgotten
    assert story(settled.system, settled.declined) == ["OrderPlaced", "OrderCancelled"]


def test_replay_to_order_record_restores_a_forgotten_timeline(settled: Orders) -> None:
    before = story(settled.system, settled.ok)
    assert sorted(forget(settled.system, settled.ok)) == sorted(set(before) - {"OrderPlaced", "OrderCompleted"})
    assert story(settled.system, settled.ok) == ["OrderPlaced", "OrderCompleted"]

    done = run("replay", "--order", settled.ok, "--to", "order.record", data_dir=settled.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(
        "5 events sent to order.record (InventoryCommitted 1, InventoryReserved 1, PaymentAuthorized 1, "
        "PaymentCaptured 1, ShipmentScheduled 1), 2 skipped (OrderCompleted 1, OrderPlaced 1: not subscribed)"
    ), done.stdout
    assert "has handled" not in done.stdout
    assert story(settled.system, settled.ok) == before  # handled before the command returned

    again = run("replay", "--order", settled.ok, "--to", "order.record", data_dir=settled.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "order.record has handled 5 of them already" in again.stdout and "harmless" in again.stdout
    assert story(settled.system, settled.ok) == before
    assert run("replay", "--rebuild", "orders", data_dir=settled.data_dir).stdout.startswith("consistent: 3 orders")


def test_replay_by_type_sends_only_that_type(settled: Orders) -> None:
    system = settled.system
    forget(system, settled.ok, ("PaymentCaptured", "ShipmentScheduled"))
    plan = plan_replay(system.runtime.databases, Selection(types=("PaymentCaptured",)), "order.record")
    assert plan.by_type() == {"PaymentCaptured": 1} and not plan.skipped
    assert plan.already_handled == 0
    assert send(plan, system.runtime.relay.publisher) == {"PaymentCaptured": 1}
    wait_until(lambda: "PaymentCaptured" in story(system, settled.ok), what="PaymentCaptured back in the timeline")
    assert system.workers.wait_idle(timeout=30)
    assert "ShipmentScheduled" not in story(system, settled.ok)

    later = Selection(types=("PaymentCaptured",), since=datetime.now(UTC) + timedelta(minutes=1))
    assert not plan_replay(system.runtime.databases, later, "order.record").events
    earlier = Selection(types=("OrderCompleted",), since=datetime.now(UTC) - timedelta(hours=1))
    assert plan_replay(system.runtime.databases, earlier, "inventory.commit").by_type() == {"OrderCompleted": 1}


def test_a_bad_consumer_or_type_is_refused_naming_the_valid_ones(settled: Orders) -> None:
    bad_consumer = run("replay", "--order", settled.ok, "--to", "order.recrod", data_dir=settled.data_dir)
    assert bad_consumer.returncode == 2
    assert "unknown consumer 'order.recrod'" in bad_consumer.stderr
    assert "inventory.commit, inventory.release_on_cancel, order.record, order.start" in bad_consumer.stderr

    bad_type = run("replay", "--type", "PaymentTaken", "--to", "order.record", data_dir=settled.data_dir)
    assert bad_type.returncode == 2
    assert "unknown event type 'PaymentTaken'" in bad_type.stderr and "PaymentCaptured" in bad_type.stderr

    not_its = run("replay", "--type", "OrderCompleted", "--to", "order.record", data_dir=settled.data_dir)
    assert not_its.returncode == 2
    assert "order.record does not subscribe to OrderCompleted; consumers of them: inventory.commit" in not_its.stderr

    for args in (["--to", "order.record"], ["--order", settled.ok], ["--rebuild", "orders", "--to", "order.record"]):
        refused = run("replay", *args, data_dir=settled.data_dir)
        assert refused.returncode == 2 and "usage: python -m app replay" in refused.stderr, args
    assert all("Traceback" not in r.stderr for r in (bad_consumer, bad_type, not_its))


def test_replay_knows_the_consumers_of_the_systems_saga_mode(system: System, saga_mode: str) -> None:
    from app.operations.replay import ReplayError

    rt = system.runtime
    placed = Selection(types=("OrderPlaced",))
    if saga_mode == "choreography":  # shipping joins on OrderPlaced: a consumer to replay to
        assert plan_replay(rt.databases, placed, "shipping.join", rt.subscriptions).consumer == "shipping.join"
    else:
        with pytest.raises(ReplayError, match="unknown consumer 'shipping.join'"):
            plan_replay(rt.databases, placed, "shipping.join", rt.subscriptions)
