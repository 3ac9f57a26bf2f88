"""Admission control: refuse new orders while the system cannot finish the ones it has.

Above capacity, accepting every order only makes every saga wait longer: they pass their
deadline, the sweeper takes them for lost, and recovery work piles onto a queue that is
already behind. Refusing at the door keeps goodput near capacity instead — the caller
gets :class:`app.Busy` with a ``retry_after`` and nothing is written or enqueued.

The signal is the **backlog in seconds**: how long the sagas in flight would take to
finish at the rate sagas finished lately (Little's law: in flight ÷ finish rate), but never
more than the age of the oldest saga in flight — a burst into an idle system is not a
backlog until it has waited, and a few lost sagas in a busy system do not look like one,
since the others keep finishing. New orders are refused while

* the backlog is over ``CHECKOUT_ADMISSION_TARGET_SECONDS`` and at least
  ``CHECKOUT_ADMISSION_MIN_IN_FLIGHT`` sagas are in flight, or
* ``CHECKOUT_ADMISSION_MAX_IN_FLIGHT`` sagas are in flight, whatever the rate.

Each placing process measures the load (two indexed queries of the order service's
table) at most every ``CHECKOUT_ADMISSION_REFRESH_SECONDS`` and decides from that
measurement in between, so a refusal costs no round trip to the database. Business logic
only: nothing here knows of Celery.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.domain.errors import Busy

log = logging.getLogger("checkout.admission")

#: The longest ``retry_after`` a refusal suggests, in seconds.
MAX_RETRY_AFTER = 60


@dataclass(frozen=True)
class Load:
    """What the order service's table says about the sagas in flight, at one moment."""

    in_flight: int  # orders PENDING (placed, not finished, not parked)
    oldest_age_seconds: float  # how long the oldest of them has been in flight (0 with none)
    finished: int  # orders that reached COMPLETED or CANCELLED within the window
    window_seconds: float

    @property
    def finish_rate(self) -> float:
        """Sagas finished per second, lately."""
        return self.finished / self.window_seconds

    @property
    def backlog_seconds(self) -> float:
        """How long the sagas in flight would take to finish at the recent rate, at most the
        oldest one's age (``inf`` never: with nothing finishing, the oldest age grows)."""
        if self.in_flight == 0:
            return 0.0
        rate = self.finish_rate
        drain = self.in_flight / rate if rate > 0 else math.inf
        return min(self.oldest_age_seconds, drain)


@dataclass(frozen=True)
class Limits:
    target_seconds: float  # 0: admission control is off
    min_in_flight: int
    max_in_flight: int
    refresh_seconds: float


def decide(load: Load, limits: Limits) -> Busy | None:
    """The refusal this load calls for, or None to admit."""
    if limits.target_seconds <= 0:
        return None
    rate = load.finish_rate
    if load.in_flight >= limits.max_in_flight:
        excess = (load.in_flight - limits.max_in_flight + 1) / rate if rate > 0 else limits.target_seconds
        return Busy(_retry_after(excess), f"{load.in_flight} sagas in flight (limit {limits.max_in_flight})")
    backlog = load.backlog_seconds
    if load.in_flight >= limits.min_in_flight and backlog > limits.target_seconds:
        # the excess drains in about (backlog - target) seconds at the current rate
        excess = backlog - limits.target_seconds if rate > 0 else limits.target_seconds
        return Busy(
            _retry_after(excess),
            f"backlog {backlog:.1f}s > target {limits.target_seconds:g}s "
            f"({load.in_flight} sagas in flight, {rate:.1f} finished/s)",
        )
    return None


def _retry_after(seconds: float) -> float:
    return float(max(1, min(MAX_RETRY_AFTER, math.ceil(seconds))))


class Admission:
    """The admission decision of one placing process.

    ``measure`` reads the current :class:`Load`; ``count_refusals(n)``, if given, adds ``n``
    to the refusals recorded for metrics (called at most once a refresh, never on the
    refusal's own path). Thread-safe.
    """

    def __init__(
        self,
        measure: Callable[[], Load],
        limits: Limits,
        count_refusals: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.measure = measure
        self.limits = limits
        self.count_refusals = count_refusals
        self.clock = clock
        self._lock = threading.Lock()
        self._load: Load | None = None
        self._measured_at = -math.inf
        self._refused_unrecorded = 0
        self.admitted = 0  # in this process
        self.refused = 0  # in this process

    @property
    def enabled(self) -> bool:
        return self.limits.target_seconds > 0

    def check(self) -> None:
        """Admit one order, or raise :class:`app.Busy`."""
        if not self.enabled:
            return
        with self._lock:
            now = self.clock()
            if self._load is None or now - self._measured_at >= self.limits.refresh_seconds:
                self._refresh(now)
            assert self._load is not None
            refusal = decide(self._load, self.limits)
            if refusal is None:
                self.admitted += 1
                return
            self.refused += 1
            self._refused_unrecorded += 1
        raise refusal

    def current(self) -> Load:
        """The load as measured now (for metrics and ``python -m app health``)."""
        return self.measure()

    def _refresh(self, now: float) -> None:
        self._load = self.measure()
        self._measured_at = now
        if self._refused_unrecorded and self.count_refusals is not None:
            try:
                self.count_refusals(self._refused_unrecorded)
                self._refused_unrecorded = 0
            except Exception:  # a metric: never a reason to fail a placement; counted next time
                log.warning("could not record %d refusal(s) yet", self._refused_unrecorded, exc_info=True)
