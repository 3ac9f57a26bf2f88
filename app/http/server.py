"""``python -m app api``: the HTTP API served by uvicorn over this process's system —
embedded (the in-process workers start with it) unless a broker is configured, when it is
only the order service's front door and the workers run separately."""

from __future__ import annotations

import uvicorn

from app.api import System
from config.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: Settings | None = None) -> None:
    """Serve until stopped (SIGINT, SIGTERM), then stop the system."""
    from app.http.app import create_app

    system = System(settings).start()
    try:
        uvicorn.run(create_app(system), host=host, port=port, timeout_graceful_shutdown=5)
    finally:
        system.stop()
