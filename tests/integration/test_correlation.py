"""Every message of a saga carries its correlation id and the id of what caused it."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from celery import signals

import app
from app.api import System
from app.messaging.telemetry import CAUSATION, CORRELATION, ContextFilter, json_formatter
from tests.conftest import wait_until


def test_headers_follow_the_saga_without_tasks_setting_them(api: System, saga_mode: str) -> None:
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(task: Any = None, task_id: str | None = None, args: Any = None, **_: Any) -> None:
        with lock:
            seen.append(
                {
                    "task": task.name,
                    "id": task_id,
                    "correlation": task.request.get(CORRELATION),
                    "causation": task.request.get(CAUSATION),
                    "body": args[0] if args else None,
                }
            )

    signals.task_prerun.connect(record, weak=False)
    try:
        order_id = app.place_order("c", [{"sku": "MUG-01", "qty": 1}], ship_to={"country": "AQ"})
        app.wait_for_order(order_id, timeout=30)
        wait_until(lambda: any(s["task"] == "inventory.release_on_cancel" for s in seen), timeout=10)
    finally:
        signals.task_prerun.disconnect(record)

    mine = [s for s in seen if s["correlation"] == order_id]
    assert len(mine) == len(seen), [s for s in seen if s["correlation"] != order_id]
    tasks = {s["task"] for s in mine}
    if saga_mode == "choreography":
        # no canvas: every message is an event delivered to a reaction, caused by that event
        assert {"inventory.reserve_on_placed", "payment.authorize_on_placed", "shipping.join"} <= tasks
        assert {"inventory.undo", "payment.undo", "shipping.undo", "order.record"} <= tasks
        assert not tasks & {"order.start", "order.compensate", "order.cancel"}
        for s in mine:
            assert s["causation"] == s["body"]["event_id"], s
        return
    assert {"order.start", "inventory.reserve", "payment.authorize", "shipping.schedule", "order.compensate"} <= tasks
    assert {"payment.void", "inventory.release", "order.cancel", "order.record"} <= tasks
    by_id = {s["id"]: s for s in mine}
    (start,) = [s for s in mine if s["task"] == "order.start"]
    assert start["causation"] == start["body"]["event_id"]  # delivered event: caused by OrderPlaced
    for s in mine:
        if s["task"] in {"inventory.reserve", "payment.authorize"}:
            assert s["causation"] == start["id"]  # the canvas was sent by order.start
        if s["task"] == "order.record":
            assert s["causation"] == s["body"]["event_id"]
    (compensate,) = [s for s in mine if s["task"] == "order.compensate"]
    assert by_id[compensate["causation"]]["task"] == "shipping.schedule"  # the step that failed
    for s in mine:
        if s["task"] in {"payment.void", "inventory.release", "order.cancel"}:
            assert s["causation"] in by_id  # a message of the same saga


def test_log_lines_are_json_with_the_ids(api: System) -> None:
    from app.messaging import telemetry

    stream_records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream_records.append(self.format(record))

    handler = Capture()
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter())
    token = telemetry._correlation.set("order-9")
    telemetry._causation.set("event-1")
    try:
        logger = logging.getLogger("checkout.test")
        logger.addHandler(handler)
        logger.warning("reserving %d units", 3)
    finally:
        logger.removeHandler(handler)
        telemetry._correlation.reset(token)
        telemetry._causation.set(None)
    line = json.loads(stream_records[-1])
    assert line["message"] == "reserving 3 units"
    assert (line["correlation_id"], line["causation_id"], line["level"]) == ("order-9", "event-1", "WARNING")
