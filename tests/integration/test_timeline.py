"""An order's story tells how each step went: attempts, time taken, compensations — through
the Python API and ``python -m app orders show`` (table and Mermaid)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import select

import app
from app.adapters.fake_gateway import FLAKY_FAILURES
from app.api import System
from app.cli import main
from app.services.order import OrderView, TimelineEntry
from tests.conftest import wait_until


def settled_view(order_id: str, *types: str) -> OrderView:
    """The order once every event named has reached its timeline (they arrive asynchronously)."""

    def arrived() -> OrderView | None:
        view = app.get_order(order_id)
        return view if set(types) <= {e.type for e in view.events} else None

    return wait_until(arrived, timeout=30, what=f"{', '.join(types)} on the timeline of {order_id}")


def entry(view: OrderView, event_type: str) -> TimelineEntry:
    (found,) = [e for e in view.events if e.type == event_type]
    return found


def show(system: System, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``python -m app orders show ...`` over this test's database, as its output."""
    for name in [n for n in os.environ if n.startswith("CHECKOUT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHECKOUT_DATA_DIR", str(system.runtime.settings.data_dir))
    capsys.readouterr()
    assert main(["orders", "show", *args]) == 0
    return capsys.readouterr().out


def table_rows(output: str) -> dict[str, dict[str, str]]:
    """The ``orders show`` table, one dict per event (by event type), keyed by column."""
    lines = output.splitlines()
    header_at = next(n for n, line in enumerate(lines) if line.startswith("after "))
    header = lines[header_at]
    names = header.split()
    starts = [header.index(f"{name} " if name != names[-1] else name) for name in names]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[header_at + 2 :]:
        if not line.startswith("+"):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        row = dict(zip(names, cells, strict=True))
        rows[row["event"]] = row
    return rows


def seconds(took: str) -> float:
    return float(took.removesuffix("ms")) / 1000 if took.endswith("ms") else float(took.removesuffix("s"))


@pytest.mark.timeout(120)
def test_a_flaky_authorization_shows_its_attempts_and_how_long_it_took(
    api: System, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    order_id = app.place_order("cust-t1", [{"sku": "MUG-01", "qty": 1}], payment_token="tok_flaky")
    assert app.wait_for_order(order_id, timeout=60).status == "COMPLETED"
    view = settled_view(order_id, "PaymentAuthorized", "PaymentCaptured", "ShipmentScheduled", "InventoryReserved")

    authorized = entry(view, "PaymentAuthorized")
    assert (authorized.step, authorized.outcome, authorized.compensation) == ("authorize_payment", "done", False)
    assert authorized.attempts == FLAKY_FAILURES + 1 == 3
    # from the first attempt, so at least the two retry delays (half fixed, half jitter)
    settings = api.runtime.settings
    least = sum(min(settings.retry_cap_seconds, settings.retry_base_seconds * 2**n) / 2 for n in range(FLAKY_FAILURES))
    assert authorized.duration_seconds is not None and authorized.duration_seconds >= least
    for other in ("InventoryReserved", "ShipmentScheduled", "PaymentCaptured", "OrderCompleted"):
        assert entry(view, other).attempts == 1, other
        assert entry(view, other).duration_seconds is not None, other
    assert entry(view, "OrderPlaced").attempts is None  # placing is no saga step

    # the payment service's own record of the step says the same
    steps = api.runtime.databases["payment"].tables.steps
    row = api.runtime.databases["payment"].query(
        lambda c: c.execute(
            select(steps.c.attempts, steps.c.started_at).where(
                steps.c.order_id == order_id, steps.c.step == "authorize_payment"
            )
        ).one()
    )
    assert row.attempts == 3 and row.started_at is not None

    rows = table_rows(show(api, monkeypatch, capsys, order_id))
    auth = rows["PaymentAuthorized"]
    assert (auth["service"], auth["step"], auth["outcome"], auth["attempts"]) == (
        "payment",
        "authorize_payment",
        "done",
        "3",
    )
    assert seconds(auth["took"]) >= least
    assert rows["InventoryReserved"]["attempts"] == "1"
    assert rows["OrderPlaced"]["attempts"] == "" and rows["OrderPlaced"]["took"] == ""

    mermaid = show(api, monkeypatch, capsys, order_id, "--mermaid")
    (line,) = [line for line in mermaid.splitlines() if "PaymentAuthorized" in line]
    assert line.strip().startswith("payment-->>order: PaymentAuthorized (+") and "3 attempts, took " in line


@pytest.mark.timeout(120)
def test_a_compensated_order_shows_its_compensations(
    api: System, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], saga_mode: str
) -> None:
    order_id = app.place_order("cust-t2", [{"sku": "MUG-01", "qty": 1}], ship_to={"country": "AQ"})
    done = app.wait_for_order(order_id, timeout=60)
    assert (done.status, done.reason) == ("CANCELLED", "shipping_unavailable")
    view = settled_view(order_id, "ShipmentFailed", "PaymentVoided", "InventoryReleased", "OrderCancelled")

    compensations = {e.step: e for e in view.events if e.compensation}
    undone = {"void_payment", "release_inventory"}
    if saga_mode == "choreography":  # shipping says it undid its part, though it had nothing booked
        undone.add("cancel_shipment")
    assert set(compensations) == undone
    for step, found in compensations.items():
        assert found.outcome == "done" and found.attempts == 1, step
        assert found.duration_seconds is not None and found.duration_seconds >= 0, step
    failed = entry(view, "ShipmentFailed")
    assert (failed.step, failed.outcome, failed.compensation, failed.attempts) == (
        "schedule_shipping",
        "failed",
        False,
        1,
    )

    out = show(api, monkeypatch, capsys, order_id)
    rows = table_rows(out)
    expected: dict[str, Any] = {
        "PaymentVoided": ("payment", "void_payment", "compensated", "1"),
        "InventoryReleased": ("inventory", "release_inventory", "compensated", "1"),
        "ShipmentFailed": ("shipping", "schedule_shipping", "failed", "1"),
    }
    for event_type, cells in expected.items():
        row = rows[event_type]
        assert (row["service"], row["step"], row["outcome"], row["attempts"]) == cells, row
        assert row["took"], row
    (summary,) = [line for line in out.splitlines() if line.startswith("compensations: ")]
    assert set(summary.removeprefix("compensations: ").split(", ")) == undone

    mermaid = show(api, monkeypatch, capsys, order_id, "--mermaid")
    assert "payment-->>order: PaymentVoided, compensation (+" in mermaid
    assert "inventory-->>order: InventoryReleased, compensation (+" in mermaid
