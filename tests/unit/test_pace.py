"""The pace of recent sagas (the console's throughput and latency), from order rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain.states import OrderStatus
from app.operations.pace import pace, percentile

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def row(status: OrderStatus, finished_ago: float | None, took: float = 1.0) -> dict[str, Any]:
    finished = None if finished_ago is None else NOW - timedelta(seconds=finished_ago)
    placed = (finished or NOW) - timedelta(seconds=took)
    return {"status": status, "created_at": placed, "finished_at": finished}


def test_completions_are_counted_per_minute_oldest_first() -> None:
    rows = [
        row(OrderStatus.COMPLETED, 10),
        row(OrderStatus.COMPLETED, 50),
        row(OrderStatus.COMPLETED, 70),
        row(OrderStatus.COMPLETED, 4 * 60 + 30),
        row(OrderStatus.COMPLETED, 6 * 60),  # before the window
        row(OrderStatus.CANCELLED, 20),  # finished, not completed
        row(OrderStatus.PENDING, None),
    ]
    found = pace(rows, NOW, window_minutes=5)
    assert found.completed_per_minute == (1, 0, 0, 1, 2)
    assert found.completed == 4
    assert found.rate_per_minute == 0.8
    assert found.finished == 5


def test_latency_is_placed_to_terminal_of_those_finished_in_the_window() -> None:
    rows = [row(OrderStatus.COMPLETED, 5, took=seconds) for seconds in range(1, 20)]
    rows.append(row(OrderStatus.CANCELLED, 5, took=100.0))
    rows.append(row(OrderStatus.COMPLETED, 600, took=1000.0))  # outside the window
    found = pace(rows, NOW, window_minutes=5)
    assert found.median_seconds == 10.0
    assert found.p95_seconds == 19.0
    assert found.finished == 20


def test_naive_times_are_read_as_utc() -> None:
    naive = {
        "status": OrderStatus.COMPLETED,
        "created_at": datetime(2026, 1, 5, 11, 59, 58),
        "finished_at": datetime(2026, 1, 5, 11, 59, 59, 500000),
    }
    found = pace([naive], NOW)
    assert found.completed == 1
    assert found.median_seconds == 1.5


def test_no_finished_sagas_have_no_latency() -> None:
    found = pace([row(OrderStatus.PENDING, None)], NOW)
    assert (found.completed, found.finished, found.median_seconds, found.p95_seconds) == (0, 0, None, None)
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
