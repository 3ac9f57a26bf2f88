"""The API's docs page in Chromium: Swagger UI draws the operations of the OpenAPI document,
every file it loads coming from this server — a request to any other host (a CDN) is
refused and fails the test."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import screenshot

pytestmark = pytest.mark.timeout(120)


def test_the_docs_page_draws_the_operations_from_this_server_alone(page: Page, base_url: str, artifacts: Path) -> None:
    elsewhere: list[str] = []

    def this_server_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", this_server_only)
    page.goto(f"{base_url}/docs")

    place = page.locator(".opblock-post", has=page.locator('.opblock-summary-path[data-path="/orders"]'))
    expect(place).to_be_visible()
    expect(place.locator(".opblock-summary-method")).to_have_text("POST")
    expect(page.locator('.opblock-get .opblock-summary-path[data-path="/orders/{order_id}"]')).to_be_visible()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Checkout Saga")
    assert elsewhere == []
    screenshot(page, artifacts, "docs")
