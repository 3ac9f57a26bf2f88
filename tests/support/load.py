"""Load for the broker tests, sized from capacity measured in the same test.

* :func:`measure_capacity` — a burst of ``tok_ok`` orders into the running system; its
  capacity is the burst's size over the time from the first placement to the last order
  finished (sagas per second, queueing included: what the workers really finish).
* :class:`OpenLoop` — a thread offering orders at a fixed rate (open loop: arrivals do not
  wait for earlier orders to finish) through admission control, as a caller would:
  an order refused with :class:`app.Busy` is counted, not retried.

How long a run offers load is :func:`run_seconds`: short by default, so ``make test``
takes the same time on a fast machine and on a slow or busy one; ``make soak`` sets
``SOAK_SECONDS`` for long runs of the same tests.

pytest-free, so the bench can use it too.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from app.api import System, admit_and_place, validate_order
from app.domain.errors import Busy
from app.services.order import TERMINAL, orders
from tests.support.cluster import poll_until

#: How many orders the capacity burst places: enough to fill every queue and pool.
CAPACITY_BURST = 60


def soak_seconds() -> float:
    """``SOAK_SECONDS`` from the environment (``make soak``), or 0 for a normal run."""
    raw = os.environ.get("SOAK_SECONDS", "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"SOAK_SECONDS must be a number of seconds >= 0, not {raw!r}")
    return value


def run_seconds(default: float) -> float:
    """How long a load run lasts: ``default``, or ``SOAK_SECONDS`` under ``make soak``."""
    return soak_seconds() or default


def run_orders(rate: float, default_seconds: float, minimum: int, maximum: int) -> int:
    """How many orders a run offered at ``rate`` per second places: ``default_seconds``
    worth, between ``minimum`` and ``maximum``; under ``make soak``, ``SOAK_SECONDS``
    worth (at least ``minimum``, no maximum)."""
    soak = soak_seconds()
    if soak:
        return max(minimum, round(rate * soak))
    return max(minimum, min(maximum, round(rate * default_seconds)))


@dataclass(frozen=True)
class Capacity:
    orders: int
    seconds: float  # first placement -> last order finished

    @property
    def sagas_per_second(self) -> float:
        return self.orders / self.seconds


def terminal_count(system: System, order_ids: list[str]) -> int:
    query = (
        select(func.count()).select_from(orders).where(orders.c.order_id.in_(order_ids), orders.c.status.in_(TERMINAL))
    )
    return int(system.runtime.databases["order"].query(lambda c: c.execute(query).scalar_one()))


def measure_capacity(
    system: System,
    customer: str,
    burst: int = CAPACITY_BURST,
    timeout: float = 120.0,
    diagnostics: Callable[[], str] | None = None,
) -> Capacity:
    """Place ``burst`` ``tok_ok`` orders at once and time them to the last one finished
    (raises :class:`tests.support.cluster.WaitTimeout` if they do not within ``timeout``)."""
    started = time.monotonic()
    ids = [
        system.runtime.order.place(
            validate_order(f"{customer}-{n}", [{"sku": "MUG-01", "qty": 1}], idempotency_key=f"{customer}-{n}")
        )[0]
        for n in range(burst)
    ]
    poll_until(
        lambda: terminal_count(system, ids) == burst,
        timeout=timeout,
        interval=0.05,
        what=f"the capacity burst of {burst} orders to finish",
        diagnostics=diagnostics,
    )
    return Capacity(burst, time.monotonic() - started)


@dataclass
class Offered:
    """What an open-loop run offered and what became of it."""

    accepted: list[tuple[str, float]] = field(default_factory=list)  # (order id, time.monotonic() placed)
    refused: int = 0
    first_refusal: float | None = None  # time.monotonic() of the first refusal
    retry_after: list[float] = field(default_factory=list)  # what each refusal suggested
    refusal_seconds: list[float] = field(default_factory=list)  # how long each refusal took
    placement_seconds: list[float] = field(default_factory=list)  # how long each accepted placement took
    behind: float = 0.0  # how far the thread fell behind its schedule at the worst (seconds)


class OpenLoop(threading.Thread):
    """Offers ``make(n)`` (keyword arguments of ``validate_order``) at ``rate`` per second for
    ``duration`` seconds through admission control; see :class:`Offered`."""

    def __init__(self, system: System, rate: float, duration: float, make: Callable[[int], dict[str, Any]]) -> None:
        super().__init__(name="open-loop", daemon=True)
        self.system = system
        self.rate = rate
        self.duration = duration
        self.make = make
        self.offered = Offered()
        self.error: BaseException | None = None
        self.started_at = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            self.started_at = time.monotonic()
            total = int(self.rate * self.duration)
            for n in range(total):
                due = self.started_at + n / self.rate
                # pacing, not synchronisation: the n-th order is offered at n / rate seconds
                if self._halt.wait(max(0.0, due - time.monotonic())):
                    return
                self.offered.behind = max(self.offered.behind, time.monotonic() - due)
                request = validate_order(**self.make(n))
                began = time.monotonic()
                try:
                    order_id = admit_and_place(self.system.runtime, request)
                except Busy as exc:
                    self.offered.refused += 1
                    if self.offered.first_refusal is None:
                        self.offered.first_refusal = began
                    self.offered.retry_after.append(exc.retry_after)
                    self.offered.refusal_seconds.append(time.monotonic() - began)
                    continue
                now = time.monotonic()
                self.offered.placement_seconds.append(now - began)
                self.offered.accepted.append((order_id, now))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def halt(self) -> None:
        self._halt.set()
