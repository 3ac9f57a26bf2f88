"""Adapters for the ports in :mod:`app.domain.ports`: deterministic fakes a real one replaces."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError

from app.domain.errors import TransientFailure

T = TypeVar("T")

#: Times a call is run again when a concurrent first call with the same key wrote it first.
KEY_RACE_ATTEMPTS = 5


def first_call_wins(attempt: Callable[[], T], reason: str, detail: str) -> T:
    """Run ``attempt`` — one transaction that reads the row of its idempotency key, or
    writes it — again when a concurrent first call with the same key wrote it first, so it
    reads that call's result; a :class:`TransientFailure` if the race never settles."""
    for _ in range(KEY_RACE_ATTEMPTS):
        try:
            return attempt()
        except IntegrityError:
            continue
    raise TransientFailure(reason, detail)
