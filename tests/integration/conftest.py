from __future__ import annotations

from collections.abc import Iterator

import pytest

import app.api
from app.api import System
from app.domain.subscriptions import MODES


@pytest.fixture
def api(system: System, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """The public API (``app.place_order`` ...) bound to this test's embedded system."""
    monkeypatch.setattr(app.api, "_system", system)
    yield system


@pytest.fixture(params=MODES)
def saga_mode(request: pytest.FixtureRequest) -> str:
    """Every integration test runs in both saga modes, unless it asks for one."""
    return str(request.param)
