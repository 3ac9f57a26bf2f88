"""How fast sagas finish lately: completions per minute and the time from placement to
COMPLETED or CANCELLED (median and 95th percentile) over the last few minutes, from the
order rows (``OrderQueries.find``). The console shows it; a plain function over rows, so
it is checked without a database."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from app.domain.states import TERMINAL, OrderStatus
from app.persistence.db import as_utc, utcnow

if TYPE_CHECKING:
    from app.operations.system import System

#: The window looked at, in minutes.
WINDOW_MINUTES = 5

#: Most order rows read for one look: beyond that the rates are of the newest ones only.
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Pace:
    window_minutes: int
    #: sagas COMPLETED in each minute of the window, oldest first (the last: the minute now)
    completed_per_minute: tuple[int, ...]
    finished: int  # sagas COMPLETED or CANCELLED in the window
    median_seconds: float | None  # placement to COMPLETED or CANCELLED, of those finished
    p95_seconds: float | None

    @property
    def completed(self) -> int:
        return sum(self.completed_per_minute)

    @property
    def rate_per_minute(self) -> float:
        """Sagas completed per minute, averaged over the window."""
        return self.completed / self.window_minutes


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def pace(rows: Iterable[Mapping[str, Any]], now: datetime, window_minutes: int = WINDOW_MINUTES) -> Pace:
    """The pace of the sagas that finished within ``window_minutes`` before ``now``, from
    order rows with ``status``, ``created_at`` and ``finished_at``."""
    start = now - timedelta(minutes=window_minutes)
    per_minute = [0] * window_minutes
    durations: list[float] = []
    for row in rows:
        finished_at = row["finished_at"]
        if row["status"] not in TERMINAL or finished_at is None:
            continue
        finished_at = as_utc(finished_at)
        if not start < finished_at <= now:
            continue
        durations.append((finished_at - as_utc(row["created_at"])).total_seconds())
        if row["status"] == OrderStatus.COMPLETED:
            minutes_ago = int((now - finished_at).total_seconds() // 60)
            per_minute[window_minutes - 1 - min(minutes_ago, window_minutes - 1)] += 1
    return Pace(
        window_minutes=window_minutes,
        completed_per_minute=tuple(per_minute),
        finished=len(durations),
        median_seconds=percentile(durations, 0.5),
        p95_seconds=percentile(durations, 0.95),
    )


def recent_pace(rt: System, window_minutes: int = WINDOW_MINUTES) -> Pace:
    """The pace over the last ``window_minutes``. The orders read are those placed within
    twice the window: a saga that took longer than that to finish is left out."""
    rows = rt.order.find(newer_than=timedelta(minutes=2 * window_minutes), limit=MAX_ROWS)
    return pace(rows, utcnow(), window_minutes)
