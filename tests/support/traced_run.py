"""Run in a process of its own (tracing is once per process): embedded system, traced to
CHECKOUT_TRACE_FILE. Places one order, then sends its OrderPlaced again from a thread with
no trace context (as the outbox sweep or the relay process would), then replays it; prints
the order id."""

from __future__ import annotations

import threading

from app.api import System, admit_and_place, validate_order, wait_for_order
from app.operations.replay import ReplayPlan, send

system = System().start()
rt = system.runtime
order_id = admit_and_place(rt, validate_order("traced", [{"sku": "MUG-01", "qty": 1}]))
import app.api as api  # noqa: E402

api._system = system
wait_for_order(order_id, timeout=60)
placed = next(env for env in rt.databases["order"].log(order_id) if env.event_type == "OrderPlaced")
body = placed.to_wire()
sender = threading.Thread(
    target=rt.relay.publisher.send,
    args=("order.start", body),
    kwargs={"message_id": f"{placed.event_id}:order.start", "correlation_id": order_id},
)
sender.start()
sender.join()
send(ReplayPlan("order.start", (placed,), (), 1), rt.relay.publisher)
assert system.workers.wait_idle(timeout=60)
print(order_id)
system.stop()
