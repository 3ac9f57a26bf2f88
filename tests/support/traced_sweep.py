"""Run in a process of its own (tracing is once per process): embedded system, traced to
CHECKOUT_TRACE_FILE, in the saga mode of CHECKOUT_SAGA_MODE, with no sweeper thread. The
first delivery of each consumer of the order's OrderPlaced is lost, so the saga stalls; once
it is overdue, one sweep round runs in a span of its own (``sweep``, as the beat's
``order.sweep`` task would) and re-drives it to its end. Prints the order id."""

from __future__ import annotations

import app.api as api
from app.api import System, admit_and_place, validate_order, wait_for_order
from app.messaging import tracing
from app.operations.sweeper import redrive_overdue
from config.settings import Settings
from tests.conftest import wait_until
from tests.integration.test_sweeper import Lossy

settings = Settings().model_copy(update={"saga_deadline_seconds": 1.0, "sweep_interval_seconds": 3600})
system = System(settings).start()
api._system = system
rt = system.runtime
for sweeper in system.workers.sweepers:
    sweeper.stop()
rt.relay.publisher = Lossy(rt.relay.publisher, lose=1)
order_id = admit_and_place(rt, validate_order("traced", [{"sku": "MUG-01", "qty": 1}]))
assert rt.order.view(order_id).status == "PENDING"
wait_until(lambda: order_id in rt.order.overdue(), timeout=20, what="the deadline to pass")
with tracing.span("sweep"):
    report = redrive_overdue(rt, rt.celery)
assert report.resumed == [order_id], report
assert wait_for_order(order_id, timeout=60).status == "COMPLETED"
assert system.workers.wait_idle(timeout=60)
print(order_id)
system.stop()
