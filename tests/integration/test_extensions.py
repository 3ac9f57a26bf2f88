"""Extensions on the embedded system, in both saga modes: sales analytics follows orders as
they end, a consumer added later (customer notifications, which the system does not ship)
catches up by replay, and what an extension cannot read becomes a dead letter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import app
from app import analytics
from app.api import System
from app.domain.events import Envelope, PaymentDeclined
from app.operations.audit import audit
from app.operations.replay import Selection, plan_replay, send
from config.settings import Settings
from tests.conftest import purge_memory_broker, wait_until
from tests.support import notifications

ROOT = Path(__file__).resolve().parents[2]
NOTIFICATIONS = "notifications=tests.support.notifications:extension"

pytestmark = pytest.mark.timeout(180)


def with_extensions(settings: Settings, extensions: str) -> Settings:
    return Settings(**{**settings.model_dump(exclude_unset=True), "extensions": extensions})


def place_mix(tag: str) -> dict[str, str]:
    """Orders of the test vocabulary that end every way but one; order id -> expected end."""
    placed = {
        app.place_order(f"{tag}-1", [{"sku": "MUG-01", "qty": 2}]): "COMPLETED",
        app.place_order(f"{tag}-2", [{"sku": "TEE-01", "qty": 1}]): "COMPLETED",
        app.place_order(f"{tag}-3", [{"sku": "TEE-01", "qty": 1}], payment_token="tok_declined"): "card_declined",
        app.place_order(f"{tag}-4", [{"sku": "POSTER-01", "qty": 26}]): "out_of_stock",
    }
    for order_id in placed:
        app.wait_for_order(order_id, timeout=60)
    return placed


def expected_sales(system: System, order_ids: list[str]) -> tuple[int, Counter[str], Counter[str]]:
    """(orders completed, revenue per currency, cancellations per reason), as the order service tells it."""
    views = [system.runtime.order.view(order_id) for order_id in order_ids]
    done = [v for v in views if v.status == "COMPLETED"]
    revenue: Counter[str] = Counter()
    for view in done:
        revenue[view.currency] += view.total_cents
    reasons = Counter(str(v.reason) for v in views if v.status == "CANCELLED")
    return len(done), revenue, reasons


def observed_sales(system: System) -> tuple[int, Counter[str], Counter[str]]:
    days = analytics.sales_by_day(system.runtime.databases["analytics"])
    revenue: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for day in days:
        revenue.update(day.revenue_cents)
        reasons.update(day.reasons)
    return sum(d.completed for d in days), revenue, reasons


@pytest.fixture
def analytics_on(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    purge_memory_broker()
    system = System(with_extensions(settings, "analytics")).start()
    monkeypatch.setattr(app.api, "_system", system)
    yield system
    system.stop()
    purge_memory_broker()


def test_analytics_follows_every_order_as_it_ends(analytics_on: System) -> None:
    system = analytics_on
    assert [worker.hostname for worker, _ in system.workers.workers][-1] == "analytics@embedded"
    placed = place_mix("live")
    assert [system.runtime.order.status(o) for o in placed] == ["COMPLETED", "COMPLETED", "CANCELLED", "CANCELLED"]
    expected = expected_sales(system, list(placed))
    assert expected[0] == 2 and sum(expected[2].values()) == 2
    wait_until(lambda: observed_sales(system) == expected, timeout=30, what="analytics to see every end")
    assert system.workers.wait_idle(timeout=30)
    assert observed_sales(system) == expected
    assert audit(system.runtime).clean


def test_what_an_extension_cannot_read_is_a_dead_letter_and_it_goes_on(analytics_on: System) -> None:
    system = analytics_on
    rt = system.runtime
    declined = Envelope.wrap(PaymentDeclined(order_id="no-such-order", reason="card_declined"))
    rt.celery.send_task("analytics.handle", args=({"event_type": "OrderCompleted"},))
    rt.celery.send_task("analytics.handle", args=(declined.to_wire(),))

    def letters() -> list[str]:
        return sorted(letter.reason for letter in rt.dead_letters.find() if letter.queue == "analytics")

    found = wait_until(lambda: len(letters()) == 2 and letters(), timeout=30, what="two dead letters")
    assert found[0] == "analytics does not subscribe to PaymentDeclined (it takes OrderCompleted, OrderCancelled)"
    assert found[1].startswith("invalid Envelope: ")
    order_id = app.place_order("after", [{"sku": "MUG-01", "qty": 1}])
    app.wait_for_order(order_id, timeout=60)
    wait_until(lambda: observed_sales(system)[0] == 1, timeout=30, what="analytics to go on")


def test_a_consumer_added_later_catches_up_by_replay(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Orders run before customer notifications exist; once added, it hears of new orders
    at once and of the earlier ones by replay — each order once, however often replayed."""
    purge_memory_broker()
    before = System(settings).start()
    try:
        monkeypatch.setattr(app.api, "_system", before)
        earlier = place_mix("early")
        wait_until(lambda: audit(before.runtime).clean, timeout=30, what="the first orders to settle")
        assert "notifications.handle" not in {t for ts in before.runtime.subscriptions.values() for t in ts}
    finally:
        before.stop()
        purge_memory_broker()

    system = System(with_extensions(settings, NOTIFICATIONS)).start()
    try:
        monkeypatch.setattr(app.api, "_system", system)
        rt = system.runtime
        db = rt.databases["notifications"]
        later = app.place_order("late", [{"sku": "MUG-01", "qty": 1}])
        app.wait_for_order(later, timeout=60)
        wait_until(lambda: later in notifications.sent(db), timeout=30, what="the new order's notification")
        assert system.workers.wait_idle(timeout=30)
        assert notifications.sent(db) == {later: ["completed"]}  # live from now on; nothing before

        plan = plan_replay(rt.databases, Selection(), "notifications.handle", rt.subscriptions)
        assert plan.already_handled == 1
        assert plan.by_type() == Counter({"OrderCompleted": 3, "OrderCancelled": 2})
        assert send(plan, rt.relay.publisher) == plan.by_type()
        assert system.workers.wait_idle(timeout=60)
        ends = {order_id: ["completed" if end == "COMPLETED" else "cancelled"] for order_id, end in earlier.items()}
        assert notifications.sent(db) == {**ends, later: ["completed"]}

        again = plan_replay(rt.databases, Selection(), "notifications.handle", rt.subscriptions)
        assert again.already_handled == len(again.events) == 5
        send(again, rt.relay.publisher)
        assert system.workers.wait_idle(timeout=60)
        assert notifications.count(db) == 5
        assert audit(rt).clean
    finally:
        system.stop()
        purge_memory_broker()


def run(*args: str, data_dir: Path, extensions: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env |= {"CHECKOUT_DATA_DIR": str(data_dir), "CHECKOUT_EXTENSIONS": extensions}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_analytics_command_after_the_demo_and_a_replay(tmp_path: Path) -> None:
    """As the README has it: the demo runs without analytics; analytics is added, replay
    feeds it the demo's orders, ``python -m app analytics`` sums them up."""
    assert run("demo", "--repeat", "1", data_dir=tmp_path).returncode == 0
    unnamed = run("db", "upgrade", "--service", "analytics", data_dir=tmp_path)
    assert unnamed.returncode == 1 and "analytics is not in CHECKOUT_EXTENSIONS" in unnamed.stderr
    off = run("analytics", data_dir=tmp_path)
    assert off.returncode == 2 and "add analytics to CHECKOUT_EXTENSIONS" in off.stderr
    empty = run("analytics", data_dir=tmp_path, extensions="analytics")
    assert empty.returncode == 0 and "no order has ended yet" in empty.stdout, empty.stdout + empty.stderr
    replay = ("replay", "--type", "OrderCompleted", "--type", "OrderCancelled", "--to", "analytics.handle")
    fed = run(*replay, data_dir=tmp_path, extensions="analytics")
    assert fed.returncode == 0, fed.stdout + fed.stderr
    assert "6 events sent to analytics.handle (OrderCancelled 4, OrderCompleted 2)" in fed.stdout
    shown = run("analytics", "--json", data_dir=tmp_path, extensions="analytics")
    assert shown.returncode == 0, shown.stderr
    [day] = json.loads(shown.stdout)
    assert (day["completed"], day["cancelled"]) == (2, 4)
    assert day["cancelled_by_reason"] == {
        "card_declined": 1,
        "out_of_stock": 1,
        "payment_unavailable": 1,
        "shipping_unavailable": 1,
    }
    assert set(day["revenue_cents"]) == {"EUR"} and day["revenue_cents"]["EUR"] > 0
    table = run("analytics", data_dir=tmp_path, extensions="analytics").stdout
    assert "cancel rate" in table and "67%" in table
