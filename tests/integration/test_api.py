"""The Python API as a user meets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import app
from app.api import System
from app.operations.audit import audit

ROOT = Path(__file__).resolve().parents[2]


def test_order_view_fields(api: System) -> None:
    order_id = app.place_order("cust-9", [{"sku": "BOOK-01", "qty": 2}, {"sku": "MUG-01", "qty": 1}])
    assert app.wait_for_order(order_id, timeout=30).status == "COMPLETED"
    assert audit(api.runtime, settle=10).clean  # settled: every event has reached the order
    view = app.get_order(order_id)
    assert view.order_id == order_id and view.customer_id == "cust-9"
    assert (view.status, view.reason, view.currency) == ("COMPLETED", None, "EUR")
    assert view.total_cents == 2 * 4599 + 1299 and isinstance(view.total_cents, int)
    assert view.ship_to.country == "GB"  # the default address
    assert all(e.time.utcoffset() is not None and e.time.utcoffset().total_seconds() == 0 for e in view.events)
    assert {e.service for e in view.events} == {"order", "inventory", "payment", "shipping"}
    assert view.duration_seconds is not None and view.duration_seconds > 0


def test_same_idempotency_key_places_once(api: System) -> None:
    first = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], idempotency_key="checkout-42")
    second = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], idempotency_key="checkout-42")
    assert first == second
    app.wait_for_order(first, timeout=30)
    before = {i.sku: i.available for i in app.list_catalog()}
    assert app.place_order("c", [{"sku": "MUG-01", "qty": 1}], idempotency_key="checkout-42") == first
    assert {i.sku: i.available for i in app.list_catalog()} == before


def test_catalog_shows_prices_and_live_stock(api: System) -> None:
    catalog = {i.sku: i for i in app.list_catalog()}
    assert {"MUG-01", "TEE-01", "BOOK-01", "LAMP-01", "POSTER-01"} <= set(catalog)
    assert catalog["MUG-01"].price_cents == 1299 and catalog["MUG-01"].currency == "EUR"
    order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 5}])
    app.wait_for_order(order_id, timeout=30)
    assert {i.sku: i for i in app.list_catalog()}["MUG-01"].available == catalog["MUG-01"].available - 5


def test_unknown_order(api: System) -> None:
    with pytest.raises(app.OrderNotFound):
        app.get_order("no-such-order")


def test_wait_times_out_on_a_pending_order(api: System) -> None:
    order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_down")
    with pytest.raises(TimeoutError):
        app.wait_for_order(order_id, timeout=0.05)
    assert app.wait_for_order(order_id, timeout=60).reason == "payment_unavailable"


def test_works_from_a_plain_python_process(tmp_path: Path) -> None:
    """`import app; app.wait_for_order(app.place_order(...))` starts and stops on its own."""
    code = (
        "import app\n"
        "v = app.wait_for_order(app.place_order('c1', [{'sku': 'MUG-01', 'qty': 1}]))\n"
        "print(v.status, v.total_cents)\n"
    )
    env = {**os.environ, "CHECKOUT_DATA_DIR": str(tmp_path)}
    env.pop("CHECKOUT_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "COMPLETED 1299"
    assert (tmp_path / "checkout.db").exists()
