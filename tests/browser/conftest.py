"""The console in a real browser: Debian's Chromium (``/usr/bin/chromium``, installed by
``.ci/run``) driven by Playwright over the HTTP API served as ``tests/http`` serves it.
Nothing downloads a browser. Each test's screenshots go to its ``artifacts`` directory,
named at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from app.api import System
from tests.conftest import purge_memory_broker
from tests.http.conftest import base_url, client, http_settings  # noqa: F401 - the served system, shared

CHROMIUM = "/usr/bin/chromium"

#: Chromium's flags for a headless run on a closed network: no sandbox (CI runs as root), and
#: none of the background connections (updates, sync, QUIC probes) it would otherwise try.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Where the expectations wait for the page, in milliseconds (the pages poll every second).
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)  # the assertions' own wait, 5 s unless told

SCREENSHOTS: list[Path] = []

#: Retry delays long enough that a saga retrying an unreachable gateway (``tok_down``) is still
#: PENDING for seconds (0.5 + 1 + 2 + 2 + 2) when its page is first served, on a busy machine too.
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 2.0


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The embedded system the console is served over, with slower retries than tests/http's."""
    purge_memory_broker()
    settings = http_settings(
        tmp_path_factory.mktemp("console"), retry_base_seconds=RETRY_BASE_SECONDS, retry_cap_seconds=RETRY_CAP_SECONDS
    )
    system = System(settings).start()
    yield system
    system.stop()
    purge_memory_broker()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """A Chromium with a fresh profile of its own, for a module's tests."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does: apt-get install -y chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(WAIT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    tab = browser.new_page()
    yield tab
    tab.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """The test's directory for screenshots."""
    directory = tmp_path / "artifacts"
    directory.mkdir()
    return directory


def screenshot(page: Page, directory: Path, name: str) -> Path:
    """Save the whole page as ``name``.png; the run's summary lists it."""
    path = directory / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    SCREENSHOTS.append(path)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS:
        terminalreporter.write_sep("-", "console screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))
