"""Bad input is rejected at placement, naming the field; nothing is written or enqueued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

import app
import app.api
from app.api import System
from app.services.order import orders
from config.settings import SERVICES, Settings
from tests.conftest import memory_queue_depth, purge_memory_broker

GOOD_ITEMS = [{"sku": "MUG-01", "qty": 1}]

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown sku", {"items": [{"sku": "NOPE-1", "qty": 1}]}, "items[0].sku"),
    ("qty zero", {"items": [{"sku": "MUG-01", "qty": 0}]}, "items[0].qty"),
    ("qty over 1000", {"items": [{"sku": "MUG-01", "qty": 1001}]}, "items[0].qty"),
    ("qty as text", {"items": [{"sku": "MUG-01", "qty": "2"}]}, "items[0].qty"),
    ("qty as float", {"items": [{"sku": "MUG-01", "qty": 1.5}]}, "items[0].qty"),
    ("no lines", {"items": []}, "items"),
    ("101 lines", {"items": [{"sku": "MUG-01", "qty": 1}] * 101}, "items"),
    ("items not a list", {"items": None}, "items"),
    ("unknown line field", {"items": [{"sku": "MUG-01", "qty": 1, "price": 1}]}, "items[0].price"),
    ("unsupported currency", {"currency": "USD"}, "currency"),
    ("malformed currency", {"currency": "euro"}, "currency"),
    ("unknown country", {"ship_to": {"country": "ZZ"}}, "ship_to.country"),
    ("lowercase country", {"ship_to": {"country": "gb"}}, "ship_to.country"),
    ("three-letter country", {"ship_to": {"country": "GBR"}}, "ship_to.country"),
    ("no country", {"ship_to": {"city": "Paris"}}, "ship_to.country"),
    ("oversized name", {"ship_to": {"country": "GB", "name": "x" * 101}}, "ship_to.name"),
    ("oversized customer", {"customer_id": "c" * 65}, "customer_id"),
    ("empty customer", {"customer_id": ""}, "customer_id"),
    ("bad token", {"payment_token": "4242424242424242"}, "payment_token"),
    ("oversized idempotency key", {"idempotency_key": "k" * 129}, "idempotency_key"),
    ("idempotency key with a lone surrogate", {"idempotency_key": "key-\ud800"}, "idempotency_key"),
    ("idempotency key with a line break", {"idempotency_key": "key\n1"}, "idempotency_key"),
    ("sku with a lone surrogate", {"items": [{"sku": "MUG-\udfff", "qty": 1}]}, "items[0].sku"),
]


@pytest.fixture
def idle_system(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """The API over a prepared database, with no workers: anything enqueued stays queued."""
    purge_memory_broker()
    system = System(settings)
    system.runtime.prepare()
    monkeypatch.setattr(app.api, "_system", system)
    yield system
    system.stop()
    purge_memory_broker()


def count_rows(system: System) -> int:
    db = system.runtime.databases["order"]
    return int(
        db.query(
            lambda c: c.execute(select(func.count()).select_from(orders)).scalar()
            + c.execute(select(func.count()).select_from(db.tables.events)).scalar()
        )
    )


@pytest.mark.parametrize(("label", "override", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_invalid_order_naming_the_field(
    idle_system: System, label: str, override: dict[str, Any], field: str
) -> None:
    kwargs: dict[str, Any] = {"customer_id": "cust-1", "items": GOOD_ITEMS, **override}
    with pytest.raises(app.InvalidOrder) as err:
        app.place_order(**kwargs)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert count_rows(idle_system) == 0
    assert all(memory_queue_depth(q) == 0 for q in SERVICES)


def test_a_good_order_is_written_and_enqueued(idle_system: System) -> None:
    """The same probe sees a valid order: the checks above are not vacuous."""
    app.place_order("cust-1", GOOD_ITEMS)
    assert count_rows(idle_system) == 2  # the order and its OrderPlaced event
    assert memory_queue_depth("order") == 1  # order.start, waiting for a worker
