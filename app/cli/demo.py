"""The demo: one batch of orders through every row of the test vocabulary."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import app
from app.cli.output import money, print_table
from app.domain.states import OrderStatus
from app.operations.audit import audit

#: (label, expected outcome, place_order keyword arguments)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("tok_ok", OrderStatus.COMPLETED, {"items": [{"sku": "MUG-01", "qty": 2}, {"sku": "TEE-01", "qty": 1}]}),
    ("tok_declined", "CANCELLED card_declined", {"payment_token": "tok_declined"}),
    ("tok_flaky", "COMPLETED after retries", {"payment_token": "tok_flaky"}),
    ("tok_down", "CANCELLED payment_unavailable", {"payment_token": "tok_down"}),
    ("qty > stock", "CANCELLED out_of_stock", {"items": [{"sku": "POSTER-01", "qty": 999}]}),
    ("ship to AQ", "CANCELLED shipping_unavailable", {"ship_to": {"country": "AQ"}}),
]

#: Inputs rejected at placement: (label, place_order keyword arguments)
REJECTED: list[tuple[str, dict[str, Any]]] = [
    ("unknown SKU", {"items": [{"sku": "NOPE-1", "qty": 1}]}),
    ("qty 0", {"items": [{"sku": "MUG-01", "qty": 0}]}),
    ("no lines", {"items": []}),
    ("currency XYZ", {"currency": "XYZ"}),
    ("country ZZ", {"ship_to": {"country": "ZZ"}}),
    ("oversized name", {"ship_to": {"country": "GB", "name": "x" * 5000}}),
]


def _quiet_logs() -> None:
    """Expected failures are the point of the demo; keep Celery's tracebacks off the screen."""
    for name in ("celery", "kombu"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run(repeat: int = 3, timeout: float = 60.0) -> int:
    _quiet_logs()
    started = time.monotonic()
    print("starting the embedded system (in-memory broker, SQLite, one worker per service) ...")
    app.start()
    placed: list[tuple[str, str, str]] = []
    for round_ in range(repeat):
        for label, expected, kwargs in CASES:
            args = {"items": [{"sku": "BOOK-01", "qty": 1}], **kwargs}
            order_id = app.place_order(f"demo-{round_}", **args)
            placed.append((order_id, label, expected))
    print(f"placed {len(placed)} orders; rejected at the edge:")
    for label, kwargs in REJECTED:
        args = {"items": [{"sku": "MUG-01", "qty": 1}], **kwargs}
        try:
            app.place_order("demo", **args)
            print(f"  {label:15} NOT REJECTED")
        except app.InvalidOrder as exc:
            print(f"  {label:15} InvalidOrder: {exc}")

    rows = []
    finished = 0
    deadline = time.monotonic() + timeout
    for order_id, label, expected in placed:
        view = app.wait_for_order(order_id, timeout=max(0.1, deadline - time.monotonic()))
        finished += 1
        if sys.stderr.isatty():
            print(f"\r  waiting for sagas: {finished}/{len(placed)}", end="", file=sys.stderr, flush=True)
        rows.append(
            (
                order_id[:8],
                label,
                view.status,
                view.reason or "",
                money(view.total_cents, view.currency),
                f"{view.duration_seconds:.2f}s",
                expected,
            )
        )
    if sys.stderr.isatty():
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
    print_table(rows, ("order", "input", "outcome", "reason", "total", "duration", "expected"))
    report = audit(app.api._current().runtime, settle=10.0)
    print(f"auditor: {report.summary()}")
    for violation in report.violations:
        print(f"  - {violation}")
    print(f"demo finished in {time.monotonic() - started:.1f}s")
    app.stop()
    return 0 if report.clean else 1
