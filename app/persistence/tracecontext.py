"""Where :meth:`app.persistence.db.UnitOfWork.emit` learns the trace context each event
carries: the W3C ``traceparent`` of the span the current transaction runs in, or None.
Tracing (app/messaging/tracing.py) installs the real provider; off, every event carries none."""

from __future__ import annotations

from collections.abc import Callable


def _none() -> str | None:
    return None


_provider: Callable[[], str | None] = _none


def current() -> str | None:
    return _provider()


def set_trace_context(provider: Callable[[], str | None]) -> None:
    global _provider
    _provider = provider
