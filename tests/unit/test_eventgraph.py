"""The event graph is data, and it is checked: every event type has a consumer and every
failure event reaches a compensation, in both saga modes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.domain.events import REGISTRY
from app.domain.subscriptions import CHOREOGRAPHY_SUBSCRIPTIONS, MODES, SUBSCRIPTIONS
from app.operations.eventgraph import EMITS, edges, mermaid, problems


@pytest.mark.parametrize("mode", MODES)
def test_the_graph_of_each_mode_has_no_problem(mode: str) -> None:
    assert problems(mode) == []


def test_an_event_nobody_consumes_is_named() -> None:
    table = {event: tasks for event, tasks in SUBSCRIPTIONS.items() if event != "OrderCompleted"}
    assert problems("orchestration", table) == ["OrderCompleted: no consumer (orchestration)"]


def test_a_failure_event_that_reaches_no_compensation_is_named() -> None:
    # choreography with payment declines only recorded by the order, and nobody undoing
    # anything on a cancellation: nothing would give the stock back
    table = dict(CHOREOGRAPHY_SUBSCRIPTIONS)
    table["PaymentDeclined"] = ("order.record",)
    table["OrderCancelled"] = ("order.record",)
    assert problems("choreography", table) == [
        "PaymentDeclined: a failure event with no path to a compensation (choreography)"
    ]


def test_every_task_in_the_graph_is_a_real_task_and_emits_real_events(tmp_path: object) -> None:
    from app.bootstrap import Runtime
    from config.settings import Settings

    rt = Runtime(Settings())
    try:
        for mode in MODES:
            for edge in edges(mode):
                for end in (edge.source, edge.target):
                    assert end in REGISTRY or end in rt.celery.tasks, (mode, end)
        assert all(event in REGISTRY for events in EMITS.values() for event in events)
    finally:
        rt.close()


def test_the_cli_prints_the_graph_and_checks_it() -> None:
    graph = subprocess.run(
        [sys.executable, "-m", "app", "events", "graph", "--mode", "choreography"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.startswith("flowchart LR") and '["shipping.join"]' in graph.stdout
    assert mermaid("choreography") == graph.stdout.rstrip("\n")
    check = subprocess.run(
        [sys.executable, "-m", "app", "events", "check", "--mode", "all"], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
