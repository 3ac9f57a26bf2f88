"""A per-customer limit on orders placed over HTTP (``CHECKOUT_API_RATE_LIMIT_PER_MINUTE``).

It protects the front door from one caller's flood; admission control (``app.Busy``)
protects the system as a whole. Each API process counts its own requests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

#: The window the limit counts over, in seconds.
WINDOW_SECONDS = 60.0

#: Customers remembered before those quiet for a whole window are forgotten.
MAX_TRACKED = 10_000


class RateLimit:
    """At most ``per_minute`` admissions per key over any sliding minute (0: no limit)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """Count one request of ``key``: None if it is within the limit, else the whole
        seconds until it would be (nothing is counted then)."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        with self._lock:
            stamps = self._seen.setdefault(key, deque())
            while stamps and stamps[0] <= now - WINDOW_SECONDS:
                stamps.popleft()
            if len(stamps) >= self.per_minute:
                return max(1, math.ceil(stamps[0] + WINDOW_SECONDS - now))
            stamps.append(now)
            if len(self._seen) > MAX_TRACKED:
                self._forget(now)
            return None

    def _forget(self, now: float) -> None:
        for key in [k for k, s in self._seen.items() if not s or s[-1] <= now - WINDOW_SECONDS]:
            del self._seen[key]
