"""The console's operator pages in Chromium: a real dead letter (the gateway unreachable,
retries few) is read and redriven from its page, and only after its preview — which names
the payment gateway — is confirmed; a bulk redrive whose selection changed under its preview
shows the new one; a parked saga is retried from the Parked page through its preview; and
with tokens set, a browser signs in (each token opening its own pages) instead of meeting
a 401.

docs/dead-letters.png is the preview ``test_a_stale_bulk_redrive_shows_the_new_preview``
saves (dead-letters-preview.png); docs/console.png is the console
``test_the_console_after_a_handful_of_orders`` saves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from app.api import System
from app.domain.states import TERMINAL
from app.http import create_app
from app.operations.bulk import PAYMENT_GATEWAY
from app.persistence.deadletters import DEAD, REDRIVEN, DeadLetter
from tests.browser.conftest import screenshot
from tests.browser.test_console import place
from tests.conftest import wait_until
from tests.http.conftest import embedded_system, served
from tests.http.test_operator import void_down

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The module's system, whose steps give up after one retry: dead letters come quickly."""
    with embedded_system(tmp_path_factory.mktemp("console-operator"), retry_max=1) as system:
        yield system


def dead_letter_of(system: System, order_id: str) -> DeadLetter:
    """The order's one DEAD letter, once it is there."""
    letters = wait_until(
        lambda: system.runtime.dead_letters.find(status=DEAD, order_id=order_id), timeout=30, what="the dead letter"
    )
    assert len(letters) == 1, letters
    return letters[0]


def status_of(system: System, letter_id: str) -> str:
    return system.runtime.dead_letters.get(letter_id).status


def order_status(client: httpx.Client, order_id: str) -> str:
    return str(client.get(f"/orders/{order_id}").json()["status"])


def test_a_dead_letter_is_redriven_from_its_page_only_once_its_preview_is_confirmed(
    page: Page, base_url: str, client: httpx.Client, embedded: System, artifacts: Path
) -> None:
    order_id = place(client, "tok_down")  # the gateway stays unreachable: the authorization dead-letters
    letter = dead_letter_of(embedded, order_id)
    page.goto(f"{base_url}/console/dead-letters?order_id={order_id}")
    row = page.locator(f'#letters tr[data-letter="{letter.id}"]')
    expect(row).to_contain_text("payment.authorize")
    expect(page.locator("#letters tbody tr")).to_have_count(1)  # the order's filter holds

    row.get_by_role("link", name=letter.id[:8]).click()
    expect(page).to_have_url(f"{base_url}/console/dead-letters/{letter.id}")
    expect(page.locator("#letter-reason")).to_contain_text("payment_unavailable")
    expect(page.locator("#letter-attempts")).to_have_text(str(letter.attempts))
    expect(page.locator("#letter-traceback")).to_contain_text("TransientFailure")
    expect(page.locator("#letter .external")).to_have_text(f"calls the {PAYMENT_GATEWAY}")

    page.locator("#redrive").click()
    preview = page.locator("#redrive-preview")
    expect(preview.locator(f'tr.calls-external[data-letter="{letter.id}"] .external')).to_have_text(PAYMENT_GATEWAY)
    expect(preview.locator("#external-count")).to_contain_text("1 of them calls a system outside ours")
    screenshot(page, artifacts, "dead-letter-preview")
    assert status_of(embedded, letter.id) == DEAD  # the preview sent nothing
    assert client.get(f"/dead-letters/{letter.id}").json()["status"] == DEAD

    page.locator("#confirm").click()
    expect(page.locator("#redrive-result")).to_contain_text("Sent again: 1")
    expect(page.locator("#letter-status")).to_have_text(REDRIVEN)  # the page read the letter again
    expect(page.locator("#redrive")).to_have_count(0)
    assert status_of(embedded, letter.id) == REDRIVEN

    missing = page.goto(f"{base_url}/console/dead-letters/no-such-letter")
    assert missing is not None and missing.status == 404
    expect(page.locator("#not-found")).to_contain_text("no dead letter with id 'no-such-letter'")


def test_a_stale_bulk_redrive_shows_the_new_preview(
    page: Page, base_url: str, client: httpx.Client, embedded: System, artifacts: Path
) -> None:
    first, second = (dead_letter_of(embedded, place(client, "tok_down")) for _ in range(2))
    page.goto(f"{base_url}/console/dead-letters")
    page.fill("input[name=task]", "payment.authorize")
    page.fill("input[name=reason]", "PAYMENT_UNAVAILABLE")
    page.locator("input[name=reason]").press("Enter")
    expect(page.locator(f'#letters tr[data-letter="{second.id}"]')).to_be_visible()

    page.locator("#redrive-matching").click()
    preview = page.locator("#redrive-preview")
    for each in (first, second):
        expect(preview.locator(f'tr.calls-external[data-letter="{each.id}"] .external')).to_have_text(PAYMENT_GATEWAY)
    screenshot(page, artifacts, "dead-letters-preview")
    assert (status_of(embedded, first.id), status_of(embedded, second.id)) == (DEAD, DEAD)

    sent = client.post(f"/dead-letters/{first.id}/redrive")  # another operator, meanwhile
    assert sent.status_code == 200, sent.text
    page.locator("#confirm").click()
    expect(preview.locator("#stale")).to_contain_text("the selection changed since its preview")
    expect(preview.locator(f'tr[data-letter="{first.id}"]')).to_have_count(0)  # the new preview
    expect(preview.locator(f'tr[data-letter="{second.id}"]')).to_be_visible()
    assert status_of(embedded, second.id) == DEAD  # the stale confirm sent nothing

    page.locator("#confirm").click()
    result = page.locator("#redrive-result")
    expect(result.locator(f'tr[data-letter="{second.id}"]')).to_be_visible()
    assert status_of(embedded, second.id) == REDRIVEN


def test_a_parked_saga_is_retried_from_the_parked_page_through_its_preview(
    page: Page, client: httpx.Client, base_url: str, embedded: System, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    rt = embedded.runtime
    real_void = rt.payment.void
    monkeypatch.setattr(rt.payment, "void", void_down)  # the authorization cannot be released
    order_id = place(client, ship_to={"country": "AQ"})  # the carrier refuses: the saga compensates, and parks
    wait_until(lambda: order_status(client, order_id) == "NEEDS_ATTENTION", timeout=60, what="the saga parked")
    (letter,) = rt.dead_letters.find(status=DEAD, order_id=order_id)

    page.goto(f"{base_url}/console/parked")
    row = page.locator(f'#parked tr[data-order="{order_id}"]')
    expect(row).to_contain_text("void_payment: payment_unavailable")
    preview = page.locator("#retry-preview")
    page.locator("#retry-all").click()  # every parked saga: this one among them
    expect(preview.locator(f'h3[data-order="{order_id}"]')).to_be_visible()
    expect(preview.locator('input[name="order_id"]')).to_have_count(0)  # its Confirm names none: all

    row.get_by_role("button", name="Retry").click()
    expect(preview.locator('input[name="order_id"]')).to_have_value(order_id)  # this one alone now
    expect(preview.locator(f'h3[data-order="{order_id}"]')).to_be_visible()
    expect(preview.locator(f'tr.calls-external[data-letter="{letter.id}"] .external')).to_have_text(PAYMENT_GATEWAY)
    assert order_status(client, order_id) == "NEEDS_ATTENTION"  # the preview did nothing
    assert status_of(embedded, letter.id) == DEAD
    screenshot(page, artifacts, "parked-preview")

    monkeypatch.setattr(rt.payment, "void", real_void)  # the cause is fixed
    page.locator("#confirm").click()
    expect(page.locator("#retry-result")).to_contain_text("Retried: 1")
    expect(page.locator(f'#retry-result p[data-order="{order_id}"]')).to_contain_text("resumed")
    wait_until(lambda: order_status(client, order_id) == "CANCELLED", timeout=30, what="the order cancelled")
    expect(row).to_have_count(0)  # the list read itself again: nothing of it is parked now
    assert status_of(embedded, letter.id) == REDRIVEN


def sign_in(page: Page, token: str) -> None:
    page.fill("input[name=token]", token)
    page.locator("#sign-in").click()


def test_with_tokens_set_a_browser_signs_in_and_each_token_opens_its_own_pages(
    browser: BrowserContext, page: Page, embedded: System, artifacts: Path
) -> None:
    browser.clear_cookies()
    with served(create_app(embedded, token="api-secret", operator_token="op-secret")) as url:
        page.goto(f"{url}/")
        expect(page).to_have_url(re.compile(r"/console/sign-in\?next=%2F&needs=CHECKOUT_API_TOKEN$"))
        sign_in(page, "wrong")
        expect(page.locator("#refused")).to_have_text("That token opens nothing here.")
        screenshot(page, artifacts, "sign-in")
        sign_in(page, "api-secret")
        expect(page).to_have_url(f"{url}/")
        expect(page.locator("h1")).to_have_text("Orders")
        (cookie,) = browser.cookies(url)
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("console_api", True, "Strict")

        page.goto(f"{url}/console/dead-letters")  # the operator's page needs the operator's token
        expect(page.locator("#needs")).to_contain_text("CHECKOUT_OPERATOR_TOKEN")
        sign_in(page, "api-secret")
        expect(page.locator("#refused")).to_have_count(0)  # it opens the console, not this page
        expect(page.locator("#needs")).to_contain_text("CHECKOUT_OPERATOR_TOKEN")
        sign_in(page, "op-secret")
        expect(page).to_have_url(f"{url}/console/dead-letters")
        expect(page.locator("h1")).to_have_text("Dead letters")
        page.locator("#redrive-matching").click()  # the console's own post: the cookie opens it
        expect(page.locator("#redrive-preview h2")).to_contain_text("Preview: redrive")
        assert page.request.get(f"{url}/dead-letters").status == 401  # the JSON API needs the header
    browser.clear_cookies()


def test_the_console_after_a_handful_of_orders(
    page: Page, base_url: str, client: httpx.Client, artifacts: Path
) -> None:
    orders = [place(client, token) for token in ("tok_ok",) * 5 + ("tok_declined", "tok_down", "tok_ok")]
    wait_until(
        lambda: all(order_status(client, each) in TERMINAL for each in orders), timeout=60, what="the sagas to end"
    )
    page.goto(f"{base_url}/")
    for each in orders:
        expect(page.locator(f'tr[data-order="{each}"] .status')).to_have_text(re.compile("COMPLETED|CANCELLED"))
    expect(page.locator('.tile[data-status="CANCELLED"] .value')).not_to_have_text("0")
    expect(page.locator("#dead-letters .value")).not_to_have_text("0")
    screenshot(page, artifacts, "console")
