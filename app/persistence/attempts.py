"""Which attempt at a saga step this is, and since when — for the order's story.

Only the task adapter (``app/messaging/tasks/kit.py``) knows how often a step's message was tried
(retries, a broker redelivery) and when its first attempt started (a header kept across
retries); the services know nothing of messages. The adapter binds both here, around the
service call, and the unit of work (``app/persistence/db.py``) stamps them on the step's record and on
every event it emits, so they travel with the events to the order's timeline. No Celery here.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Attempt:
    step: str  # the saga step or compensation being run: authorize_payment, release_inventory
    number: int  # 1 for the first attempt
    started_at: datetime  # when the first attempt started (UTC)

    def duration_ms(self, until: datetime) -> int:
        """Milliseconds from the first attempt's start to ``until`` (never negative: the
        start may have been taken on another host's clock)."""
        return max(0, round((until - self.started_at).total_seconds() * 1000))


_current: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("step_attempt", default=None)


def current() -> Attempt | None:
    return _current.get()


@contextmanager
def attempt(step: str, number: int, started_at: datetime) -> Iterator[Attempt]:
    """Bind the attempt for the duration of the ``with`` (this thread or task only)."""
    bound = Attempt(step, max(1, number), started_at)
    token = _current.set(bound)
    try:
        yield bound
    finally:
        _current.reset(token)
