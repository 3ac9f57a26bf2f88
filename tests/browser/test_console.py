"""The saga console in Chromium: an order placed over the API appears on ``/`` and reaches
COMPLETED without a reload; a declined one is found by the status filter and its page lists
its compensation; an order's page draws its timeline and follows its saga to the end; an
unknown order is a 404 page; the saga's event graph is drawn in the configured mode; the
auditor's verdict is shown live.

The screenshot of an order's page in docs/ (order.png) is the one
``test_an_order_reaches_completed_on_the_console_without_a_reload`` saves."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot

MUG = [{"sku": "MUG-01", "qty": 1}]

pytestmark = pytest.mark.timeout(120)


def place(client: httpx.Client, token: str = "tok_ok", **fields: Any) -> str:
    customer = f"console-{uuid.uuid4().hex[:12]}"
    answer = client.post("/orders", json={"customer_id": customer, "items": MUG, "payment_token": token, **fields})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["order_id"])


def test_an_order_reaches_completed_on_the_console_without_a_reload(
    page: Page, base_url: str, client: httpx.Client, artifacts: Path
) -> None:
    page.goto(f"{base_url}/")
    page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again
    order_id = place(client)

    row = page.locator(f'tr[data-order="{order_id}"]')
    expect(row.locator(".status")).to_have_text("COMPLETED")
    expect(page.locator('.tile[data-status="COMPLETED"] .value')).not_to_have_text("0")
    expect(page.locator("#throughput .value")).not_to_have_text("0.0")
    expect(page.locator("#latency .muted")).to_contain_text("finished")
    assert page.evaluate("window.loadedOnce") is True
    screenshot(page, artifacts, "console")

    row.get_by_role("link", name=order_id).click()
    expect(page).to_have_url(f"{base_url}/console/orders/{order_id}")
    expect(page.locator("#order-status")).to_have_text("COMPLETED")
    diagram = page.locator("#timeline svg")
    expect(diagram).to_be_visible()
    for event in ("OrderPlaced", "InventoryReserved", "PaymentCaptured", "OrderCompleted"):
        expect(diagram).to_contain_text(event)
    expect(page.locator("#steps")).to_contain_text("capture_payment")
    expect(page.locator("#compensations")).to_have_text("None ran.")
    screenshot(page, artifacts, "order")


def test_a_declined_order_is_found_by_status_and_shows_its_compensation(
    page: Page, base_url: str, client: httpx.Client, artifacts: Path
) -> None:
    completed = place(client)
    declined = place(client, "tok_declined")
    page.goto(f"{base_url}/")
    page.select_option("select[name=status]", "CANCELLED")

    row = page.locator(f'tr[data-order="{declined}"]')
    expect(row.locator(".status")).to_have_text("CANCELLED")
    expect(row).to_contain_text("card_declined")
    expect(page.locator(f'tr[data-order="{completed}"]')).to_have_count(0)
    tile = page.locator('.tile[data-status="COMPLETED"] .value')
    shown = int(tile.inner_text())
    later = place(client)
    expect(tile).to_have_text(str(shown + 1))  # the poll goes on ...
    expect(page.locator(f'tr[data-order="{later}"]')).to_have_count(0)  # ... and keeps the filter
    expect(page.locator("select[name=status]")).to_have_value("CANCELLED")
    screenshot(page, artifacts, "cancelled")

    page.goto(f"{base_url}/console/orders/{declined}")
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    expect(page.locator("#compensations")).to_contain_text("release_inventory")
    expect(page.locator("#timeline svg")).to_contain_text("PaymentDeclined")


def test_an_order_page_follows_its_saga_to_the_end_without_a_reload(
    page: Page, base_url: str, client: httpx.Client
) -> None:
    order_id = place(client, "tok_down")  # the gateway stays unreachable: retries, then the saga gives up
    shown = page.goto(f"{base_url}/console/orders/{order_id}")
    assert shown is not None and 'id="order-status">PENDING<' in shown.text()  # still retrying when served
    page.evaluate("window.loadedOnce = true")

    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    expect(page.locator("#order")).to_contain_text("payment_unavailable")
    expect(page.locator("#compensations")).to_contain_text("release_inventory")
    expect(page.locator("#timeline svg")).to_contain_text("OrderCancelled")
    assert page.evaluate("window.loadedOnce") is True
    expect(page.locator("#order[hx-trigger]")).to_have_count(0)  # terminal: it polls no more


def test_an_unknown_order_is_a_404_page(page: Page, base_url: str) -> None:
    answer = page.goto(f"{base_url}/console/orders/no-such-order")
    assert answer is not None and answer.status == 404
    expect(page.locator("#not-found")).to_contain_text("no-such-order")


def test_the_saga_page_draws_the_event_graph_of_the_configured_mode(page: Page, base_url: str, artifacts: Path) -> None:
    page.goto(f"{base_url}/console/saga")
    expect(page.locator("h1")).to_contain_text("(orchestration)")
    expect(page.locator("#definition")).to_contain_text("refund_payment")
    graph = page.locator("#graph svg")
    expect(graph).to_be_visible()
    expect(graph).to_contain_text("PaymentDeclined")
    expect(graph).to_contain_text("order.compensate")
    screenshot(page, artifacts, "saga")


def test_the_auditor_verdict_is_live(page: Page, base_url: str, client: httpx.Client) -> None:
    page.goto(f"{base_url}/console/audit")
    expect(page.locator("#verdict")).to_contain_text("clean")
    before = page.locator("#verdict").inner_text()
    place(client)
    expect(page.locator("#verdict")).not_to_have_text(before)  # one order more, without a reload
    expect(page.locator("#verdict")).to_contain_text("clean")
