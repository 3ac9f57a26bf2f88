from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import app.api
from app.api import System
from app.subscriptions import MODES
from config.settings import Settings


@pytest.fixture
def api(system: System, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """The public API (``app.place_order`` ...) bound to this test's embedded system."""
    monkeypatch.setattr(app.api, "_system", system)
    yield system


@pytest.fixture(params=MODES)
def saga_mode(request: pytest.FixtureRequest) -> str:
    """Every integration test runs in both saga modes, unless it asks for one."""
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path, saga_mode: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        retry_base_seconds=0.05,
        retry_cap_seconds=0.4,
        outbox_sweep_seconds=0.5,
        outbox_grace_seconds=0.5,
        saga_mode=saga_mode,
    )
