"""``python -m app api``: the HTTP API served by uvicorn over this process's system —
embedded (the in-process workers start with it) unless a broker is configured, when it is
only the order service's front door and the workers run separately."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import uvicorn

from app.api import System
from config.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class _Terminated(Exception):
    """SIGTERM, raised again by uvicorn once it has shut down gracefully."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: Settings | None = None) -> None:
    """Serve until SIGTERM (then return) or SIGINT (KeyboardInterrupt), stopping the system
    either way: uvicorn finishes the requests in flight, then the workers stop."""
    from app.http.app import create_app

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main else None
    system = System(settings).start()
    try:
        uvicorn.run(create_app(system), host=host, port=port, timeout_graceful_shutdown=5)
    except _Terminated:
        pass
    finally:
        system.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)
