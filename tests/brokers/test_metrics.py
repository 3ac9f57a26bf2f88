"""The Prometheus exporter as ``make metrics`` runs it (``python -m app metrics``), a process of
its own beside the four service workers on Redis and PostgreSQL, scraped over HTTP.

A known mix of orders runs to the end; then every count the exporter serves must match
what was placed: sagas started, completed, cancelled per reason, the duration histogram's
count, the retries of the flaky authorizations, the dead letter of the tok_down order,
and a queue depth for each service queue — zero once the queues have drained.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api import System
from config.settings import SERVICES
from tests.brokers.test_multiprocess import Row, order_plan, place_all, wait_all_terminal
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, background_process, free_port

ROOT = Path(__file__).resolve().parents[2]

MIX: tuple[Row, ...] = (
    Row("tok_ok", "COMPLETED", None, 6),
    Row("tok_declined", "CANCELLED", "card_declined", 2, {"payment_token": "tok_declined"}),
    Row("tok_flaky", "COMPLETED", None, 2, {"payment_token": "tok_flaky"}),
    Row("tok_down", "CANCELLED", "payment_unavailable", 1, {"payment_token": "tok_down"}),
    Row("qty > stock", "CANCELLED", "out_of_stock", 1, {"items": [{"sku": "POSTER-01", "qty": 999}]}),
)
PLACED = sum(row.count for row in MIX)

# No proxy between this test and the exporter, whatever the environment says.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exporter(env: dict[str, str], port: int, log_path: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """``python -m app metrics --port PORT`` (default address), stopped with SIGTERM on exit."""
    return background_process([sys.executable, "-m", "app", "metrics", "--port", str(port)], env, log_path, ROOT)


def scrape(url: str) -> str | None:
    try:
        with HTTP.open(url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and want <= got)


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_exporter_counts_match_the_orders_placed(
    broker: BrokerNamespace, system: System, workers: Workers, process_env: dict[str, str], tmp_path: Path
) -> None:
    placed = place_all(system, order_plan(MIX), customer="metrics")
    assert len(placed) == PLACED
    wait_all_terminal(system, [p.order_id for p in placed], workers, timeout=120)

    port = free_port()
    log_path = tmp_path / "exporter.log"
    url = f"http://127.0.0.1:{port}/metrics"
    with exporter(process_env, port, log_path) as proc:
        last: dict[str, Samples] = {}

        def settled() -> Samples | None:
            assert proc.poll() is None, f"exporter exited {proc.returncode}:\n{log_path.read_text()}"
            text = scrape(url)
            if text is None:
                return None
            samples = last["samples"] = parse(text)
            drained = all(value(samples, "checkout_queue_messages", queue=q) == 0 for q in SERVICES)
            started = value(samples, "checkout_sagas_started_total") == PLACED
            # the tok_down step gives up (the saga compensates) just before its message is dead-lettered
            dead = value(samples, "checkout_dead_letters", service="payment", status="dead") == 1
            return samples if drained and started and dead else None

        samples = wait_until(
            settled,
            timeout=60,
            interval=0.2,
            what="the exporter to show every saga started, one dead letter and the queues drained",
            diagnostics=lambda: f"last scrape: {last.get('samples')}\n{log_path.read_text()}\n{workers.tails()}",
        )
        assert f"serving saga metrics on http://127.0.0.1:{port}/metrics" in log_path.read_text()
    assert proc.returncode == 0, f"exporter did not stop cleanly on SIGTERM:\n{log_path.read_text()}"

    by_status = {status: sum(r.count for r in MIX if r.status == status) for status in ("COMPLETED", "CANCELLED")}
    assert value(samples, "checkout_orders_placed_total") == PLACED
    assert value(samples, "checkout_sagas_started_total") == PLACED
    assert value(samples, "checkout_sagas_completed_total") == by_status["COMPLETED"]
    for reason in ("card_declined", "payment_unavailable", "out_of_stock"):
        expected = sum(r.count for r in MIX if r.reason == reason)
        assert value(samples, "checkout_sagas_cancelled_total", reason=reason) == expected, reason
    assert total(samples, "checkout_sagas_cancelled_total") == by_status["CANCELLED"]
    assert value(samples, "checkout_sagas_in_flight") == 0
    assert value(samples, "checkout_sagas_needing_attention") == 0

    # every terminal order is in the duration histogram, under its status
    assert total(samples, "checkout_saga_duration_seconds_count") == PLACED
    for status, count in by_status.items():
        assert value(samples, "checkout_saga_duration_seconds_count", status=status.lower()) == count
        assert value(samples, "checkout_saga_duration_seconds_bucket", status=status.lower(), le="+Inf") == count
        assert value(samples, "checkout_saga_duration_seconds_sum", status=status.lower()) > 0

    # two retries per flaky authorization, retry_max for the one that gave up
    flaky = sum(r.count for r in MIX if r.label == "tok_flaky")
    retries = value(samples, "checkout_step_retries_total", service="payment", step="authorize_payment")
    assert retries >= 2 * flaky + system.runtime.settings.retry_max
    assert value(samples, "checkout_steps_total", service="payment", step="authorize_payment", outcome="failed") == (
        sum(r.count for r in MIX if r.label in {"tok_declined", "tok_down"})
    )

    # the tok_down authorization is the only dead letter
    assert total(samples, "checkout_dead_letters") == 1
    assert value(samples, "checkout_dead_letters", service="payment", status="dead") == 1

    # a depth for each service queue (Redis has no dead-letter queues), and every source read
    assert {dict(labels)["queue"] for name, labels in samples if name == "checkout_queue_messages"} == set(SERVICES)
    for source in ("orders", "steps", "dead_letters", "broker"):
        assert value(samples, "checkout_metrics_source_up", source=source) == 1
