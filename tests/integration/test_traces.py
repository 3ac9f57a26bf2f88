"""The trace context through the outbox, on a real span file (embedded, in a process of its
own): an event sent again with no context around it joins its writer's trace; a replayed
one starts a trace linked to it; `orders show --trace` prints the tree, or says why not; what
the saga sweeper re-drives joins the order's trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.domain.subscriptions import MODES
from app.messaging.tracing import ORDER_ID, SAGA_STEP
from app.operations.traces import Span, read_spans
from tests.support.cluster import REPO_ROOT


@pytest.mark.timeout(180)
def test_relayed_and_replayed_events_link_to_their_cause(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "OTEL_"))}
    env.update(CHECKOUT_DATA_DIR=str(tmp_path), CHECKOUT_TRACE_FILE=str(tmp_path / "spans.jsonl"))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.traced_run"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    order_id = done.stdout.strip().splitlines()[-1]
    spans = read_spans(tmp_path / "spans.jsonl")
    (place,) = [s for s in spans if s.name == "place_order"]
    starts = [s for s in spans if s.name == "run/order.start"]
    assert len(starts) == 3, [(s.trace_id, s.parent_id) for s in starts]  # placed, sent again, replayed
    in_trace = [s for s in starts if s.trace_id == place.trace_id]
    assert len(in_trace) == 2, "the event sent with no context around it did not join its writer's trace"
    (replay,) = [s for s in spans if s.name == "replay OrderPlaced"]
    assert replay.trace_id != place.trace_id and (place.trace_id, place.span_id) in replay.links
    (replayed,) = [s for s in starts if s.trace_id == replay.trace_id]

    shown = subprocess.run(
        [sys.executable, "-m", "app", "orders", "show", order_id, "--trace"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"trace {place.trace_id}" in shown.stdout and f"trace {replay.trace_id}" in shown.stdout
    assert f"linked to trace {place.trace_id}" in shown.stdout
    assert "  place_order  [order]" in shown.stdout and replayed.name in shown.stdout

    env.pop("CHECKOUT_TRACE_FILE")
    untraced = subprocess.run(
        [sys.executable, "-m", "app", "orders", "show", order_id, "--trace"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert untraced.returncode == 1 and "CHECKOUT_TRACE_FILE is not set" in untraced.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("saga_mode", MODES)
def test_what_the_sweeper_redrives_joins_the_orders_trace(tmp_path: Path, saga_mode: str) -> None:
    """A saga whose OrderPlaced was lost is re-driven by one sweep round (in a ``sweep`` span
    of its own): the steps it runs then are in the order's trace, under a ``redrive`` span
    linked to the sweep, and not in the sweep's trace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "OTEL_"))}
    env.update(
        CHECKOUT_DATA_DIR=str(tmp_path), CHECKOUT_TRACE_FILE=str(tmp_path / "spans.jsonl"), CHECKOUT_SAGA_MODE=saga_mode
    )
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.traced_sweep"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    order_id = done.stdout.strip().splitlines()[-1]
    spans = read_spans(tmp_path / "spans.jsonl")
    by_id = {s.span_id: s for s in spans}
    (place,) = [s for s in spans if s.name == "place_order"]
    (sweep,) = [s for s in spans if s.name == "sweep"]
    (redrive,) = [s for s in spans if s.name == "redrive"]
    assert sweep.trace_id != place.trace_id
    assert redrive.trace_id == place.trace_id and redrive.attributes.get(ORDER_ID) == order_id
    assert (sweep.trace_id, sweep.span_id) in redrive.links
    assert not [s.name for s in spans if s.trace_id == sweep.trace_id and s is not sweep], "sent in the sweep's trace"

    def under_redrive(s: Span) -> bool:
        while s.parent_id is not None and s.parent_id in by_id:
            s = by_id[s.parent_id]
            if s is redrive:
                return True
        return False

    # the saga's first step ran only after the re-drive (its first delivery was lost)
    (reserve,) = [s for s in spans if s.name.startswith("run/") and s.attributes.get(SAGA_STEP) == "reserve_inventory"]
    assert reserve.trace_id == place.trace_id and reserve.start > redrive.start
    if saga_mode == "orchestration":  # the coordinator sent the saga again, within the re-drive
        assert under_redrive(reserve), "the resumed saga is not a child of the re-drive"
    else:  # the lost OrderPlaced sent again, in the trace of the transaction that wrote it
        assert reserve.parent_id is not None and by_id[reserve.parent_id].name.startswith("apply_async/")
    naming = [s for s in spans if s.attributes.get(ORDER_ID) == order_id]
    assert len(naming) > 5 and {s.trace_id for s in naming} == {place.trace_id}
