"""Traces across real processes: a compensated saga is one trace across all four services.

The four services run as separate ``celery worker`` processes, each tracing to one
shared span file (``CHECKOUT_TRACE_FILE``, app/messaging/spanfile.py) as ``checkout-<queue>``.
Two orders that must be compensated — one out of stock, one declined — are placed by
``python -m app place`` in a process of its own (traced as ``checkout-api``). For each order,
in both saga modes, the test reads the file back and checks that:

* every span naming the order is in one trace, rooted at the placement (``place_order``), and
  the two orders' traces differ;
* every other span of it has its parent in the trace and started after it (causal order);
* the trace has spans of the four worker processes, each service's own tasks among them;
* the failed step's span names its saga step; in orchestration the compensations follow it
  as one causal chain, newest first (each a descendant of the one before); in choreography
  each service's undo is a descendant of the failed step;
* every event the order's services wrote carries the traceparent of a span of the trace
  (the outbox carried the context), and ``orders show --trace`` prints the tree.

It runs on both brokers in both saga modes (about 15 s a case): on Redis, and on RabbitMQ
with quorum queues in orchestration (where the database result backend joins the chord with
``celery.chord_unlock``, re-sent through native delayed delivery, and its spans must stay in
the order's trace on the shipping worker) and classic queues in choreography.

The test process itself does not trace (its System places nothing).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.api import System
from app.domain.subscriptions import MODES
from app.messaging.tracing import ORDER_ID, SAGA_STEP, SERVICE
from app.operations.traces import Span, order_spans, read_spans, trace_id_of
from config.settings import SERVICES, Settings
from tests.brokers.conftest import settings_env
from tests.conftest import wait_until
from tests.support.cluster import REPO_ROOT, BrokerNamespace, Workers, worker_env

pytestmark = [pytest.mark.brokers, pytest.mark.timeout(240)]

TERMINAL_TIMEOUT = 90.0

#: orchestration: the compensations the error callback chains, newest first
COMPENSATIONS = ("refund_payment", "cancel_shipment", "void_payment", "release_inventory")

#: label, arguments of `python -m app place`, reason, the failing step and its service
ORDERS = (
    ("qty > stock", ["POSTER-01:999"], "out_of_stock", "reserve_inventory", "inventory"),
    ("tok_declined", ["MUG-01", "--token", "tok_declined"], "card_declined", "authorize_payment", "payment"),
)


@pytest.fixture
def settings_overrides(broker: BrokerNamespace, saga_mode: str) -> dict[str, Any]:
    """On RabbitMQ, orchestration runs on quorum queues (the chord's ``celery.chord_unlock``
    polls through native delayed delivery), choreography on classic queues."""
    if broker.kind == "rabbitmq" and saga_mode == "orchestration":
        return {"rabbitmq_queue_type": "quorum"}
    return {}


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    return tmp_path / "spans.jsonl"


@pytest.fixture
def process_env(
    broker: BrokerNamespace,
    settings: Settings,
    settings_overrides: dict[str, Any],
    saga_mode: str,
    trace_file: Path,
) -> dict[str, str]:
    """Every worker's environment, tracing to the span file (and no OTEL_* of the caller's)."""
    assert settings.database_url is not None
    env = worker_env(broker, settings.database_url, settings_env({"saga_mode": saga_mode, **settings_overrides}))
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    env["CHECKOUT_TRACE_FILE"] = str(trace_file)
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    found = []
    while span.parent_id is not None and span.parent_id in by_id:
        span = by_id[span.parent_id]
        found.append(span)
    return found


def settled(trace_file: Path, order_id: str) -> list[Span] | None:
    """The order's spans once the trace reached inventory.release_on_cancel (the last reaction
    to OrderCancelled in both modes) and every span's parent is in the file, else None."""
    spans = order_spans(read_spans(trace_file), order_id) if trace_file.exists() else []
    ids = {s.span_id for s in spans}
    if not any(s.name == "run/inventory.release_on_cancel" for s in spans):
        return None
    if any(s.parent_id is not None and s.parent_id not in ids for s in spans):
        return None
    if {s.service for s in spans} < {f"checkout-{service}" for service in SERVICES}:
        return None
    return spans


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_a_compensated_saga_is_one_trace_across_the_four_services(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    process_env: dict[str, str],
    trace_file: Path,
    saga_mode: str,
) -> None:
    placed: dict[str, tuple[str, str, str, str]] = {}
    for label, args, reason, step, service in ORDERS:
        done = cli(process_env, "place", *args, "--no-wait")
        assert done.returncode == 0, done.stdout + done.stderr
        placed[done.stdout.strip().splitlines()[-1]] = (label, reason, step, service)

    rt = system.runtime
    for order_id, (label, reason, _, _) in placed.items():
        view = wait_until(
            lambda order_id=order_id: (v,) if (v := rt.order.view(order_id)).status != "PENDING" else None,
            timeout=TERMINAL_TIMEOUT,
            interval=0.2,
            what=f"order {order_id} ({label}) to end",
            diagnostics=workers.tails,
        )[0]
        assert (view.status, view.reason) == ("CANCELLED", reason), f"{label}: {view.status} {view.reason}"

    traces = {}
    for order_id, (label, _, failed_step, failed_service) in placed.items():
        (spans,) = wait_until(
            lambda order_id=order_id: (s,) if (s := settled(trace_file, order_id)) is not None else None,
            timeout=60,
            interval=0.5,
            what=f"the spans of order {order_id} ({label}) from every service",
            diagnostics=lambda: f"{len(read_spans(trace_file)) if trace_file.exists() else 0} spans in the file",
        )
        by_id = {s.span_id: s for s in spans}
        trace_ids = {s.trace_id for s in spans}
        assert len(trace_ids) == 1, f"{label}: the order's spans are in {len(trace_ids)} traces"
        traces[order_id] = trace_ids.pop()

        roots = [s for s in spans if s.parent_id is None]
        assert [(r.name, r.service) for r in roots] == [("place_order", "checkout-api")], roots
        assert roots[0].attributes.get(ORDER_ID) == order_id
        for s in spans:
            if s.parent_id is not None:
                parent = by_id[s.parent_id]
                assert s.start >= parent.start, f"{label}: {s.name} started before its parent {parent.name}"

        processes = {s.service for s in spans}
        assert {f"checkout-{service}" for service in SERVICES} | {"checkout-api"} <= processes, processes
        for service in SERVICES:  # each worker process ran its own service's tasks
            mine = [
                s
                for s in spans
                if s.name.startswith("run/")
                and not s.name.startswith("run/celery.")  # Celery's own, such as chord_unlock
                and s.service == f"checkout-{service}"
            ]
            assert mine and all(s.attributes.get(SERVICE) == service for s in mine), (service, mine)
            assert all(s.attributes.get(ORDER_ID) == order_id for s in mine), (service, mine)

        unlocks = [s for s in spans if s.name == "run/celery.chord_unlock"]
        if broker.kind == "rabbitmq" and saga_mode == "orchestration":
            # the database result backend joins the chord by polling on the shipping queue
            assert unlocks and {s.service for s in unlocks} == {"checkout-shipping"}, unlocks
        failed = [s for s in spans if s.name.startswith("run/") and s.attributes.get(SAGA_STEP) == failed_step]
        assert failed, f"{label}: no span of the failed step {failed_step}"
        failure = failed[0]
        assert failure.service == f"checkout-{failed_service}"
        if saga_mode == "orchestration":  # the canvas's step raises StepFailed; a reaction returns
            assert failure.status == "ERROR", failure
        if saga_mode == "orchestration":
            # the error callback runs the compensations as a chain, newest first: each one's
            # span is a descendant of the one before, all after the failure
            chain = [next(s for s in spans if s.attributes.get(SAGA_STEP) == name) for name in COMPENSATIONS]
            assert [s.attributes.get(SERVICE) for s in chain] == ["payment", "shipping", "payment", "inventory"]
            for before, after in zip(chain, chain[1:], strict=False):
                assert before in ancestors(after, by_id), f"{label}: {after.name} is not caused by {before.name}"
            compensate = next(s for s in ancestors(chain[0], by_id) if s.name == "run/order.compensate")
            assert compensate.start >= failure.start
        else:
            # each service undoes its own part on the failure event: caused by the failed step
            undo = {s.name for s in spans if failure in ancestors(s, by_id)}
            assert {f"run/{service}.undo" for service in ("inventory", "payment", "shipping")} <= undo, undo
            assert "run/order.record" in undo, undo

        written = [env for db in rt.databases.values() for env in db.log(order_id)]
        assert written and all(trace_id_of(env.traceparent) == traces[order_id] for env in written), [
            (env.event_type, env.traceparent) for env in written
        ]
        assert all(env.traceparent is not None and env.traceparent.split("-")[2] in by_id for env in written)
        placed_event = next(env for env in written if env.event_type == "OrderPlaced")
        assert placed_event.traceparent is not None and placed_event.traceparent.split("-")[2] == roots[0].span_id

        shown = cli(process_env, "orders", "show", order_id, "--trace")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        tree = shown.stdout[shown.stdout.index(f"trace {traces[order_id]}") :].splitlines()
        assert tree[1].startswith("  place_order  [order]"), tree[:3]
        assert any(line.startswith("      run/") for line in tree), tree
        print(f"\n[{saga_mode}] {label}: {len(spans)} spans in trace {traces[order_id]} over {sorted(processes)}")
    assert len(set(traces.values())) == len(placed), "two orders share a trace"
