"""The HTTP API served for real: uvicorn on a free port in a thread, over an embedded system
(in-process workers on ``memory://``, SQLite), spoken to over HTTP with httpx."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.api import System
from config.settings import Settings
from tests.conftest import purge_memory_broker, wait_until


def http_settings(data_dir: Path, **overrides: object) -> Settings:
    fast: dict[str, object] = {
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.4,
        "outbox_sweep_seconds": 0.5,
        "outbox_grace_seconds": 0.5,
    }
    return Settings(data_dir=data_dir, **(fast | overrides))  # type: ignore[arg-type]


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 until the block ends; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def embedded_system(data_dir: Path, **overrides: object) -> Iterator[System]:
    """An embedded system over ``http_settings(data_dir, **overrides)`` until the block ends."""
    purge_memory_broker()
    system = System(http_settings(data_dir, **overrides)).start()
    try:
        yield system
    finally:
        system.stop()
        purge_memory_broker()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One embedded system for a module's tests (starting one costs a second or two)."""
    with embedded_system(tmp_path_factory.mktemp("http")) as system:
        yield system


@pytest.fixture(scope="module")
def base_url(embedded: System) -> Iterator[str]:
    from app.http import create_app

    with served(create_app(embedded)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http
