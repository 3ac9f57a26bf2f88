"""Saga metrics for Prometheus, read at scrape time from what the system recorded.

Nothing is counted in memory: every value comes from the durable state — the orders, each
service's step records and dead letters, the broker's queues — when Prometheus scrapes. So
the numbers survive restarts, agree however many worker processes there are, and one
exporter (``python -m app metrics``) serves the whole system.

| metric | type | labels | what |
|---|---|---|---|
| ``checkout_orders_placed_total`` | counter | | orders placed |
| ``checkout_sagas_started_total`` | counter | | sagas dispatched |
| ``checkout_sagas_completed_total`` | counter | | orders COMPLETED |
| ``checkout_sagas_cancelled_total`` | counter | ``reason`` | orders CANCELLED, by reason |
| ``checkout_sagas_in_flight`` | gauge | | orders PENDING |
| ``checkout_sagas_needing_attention`` | gauge | | orders NEEDS_ATTENTION (a compensation gave up) |
| ``checkout_saga_duration_seconds`` | histogram | ``status`` | placement to COMPLETED / CANCELLED |
| ``checkout_steps_total`` | counter | ``service``, ``step``, ``outcome`` | steps and compensations recorded |
| ``checkout_step_retries_total`` | counter | ``service``, ``step`` | retries those took |
| ``checkout_dead_letters`` | gauge | ``service``, ``status`` | dead letters by status (dead, redriven ...) |
| ``checkout_queue_messages`` | gauge | ``queue`` | messages waiting in each queue (RabbitMQ: and ``<queue>.dlq``) |
| ``checkout_queue_consumers`` | gauge | ``queue`` | RabbitMQ only: consumers of each queue |
| ``checkout_admission_admitted_total`` | counter | | orders admitted by admission control (= orders placed) |
| ``checkout_admission_refused_total`` | counter | | orders refused as busy, by every placing process |
| ``checkout_admission_backlog_seconds`` | gauge | | admission signal: in flight / finish rate, at most oldest age |
| ``checkout_admission_target_seconds`` | gauge | | the backlog above which new orders are refused (0: off) |
| ``checkout_admission_finish_rate`` | gauge | | sagas finished per second over the admission window |
| ``checkout_metrics_source_up`` | gauge | ``source`` | 1 if the source could be read at this scrape, else 0 |
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.domain.states import OrderStatus
from app.messaging.queues import queue_depths as broker_queue_depths
from config.settings import SERVICES

if TYPE_CHECKING:
    from app.operations.system import System

log = logging.getLogger("checkout.metrics")

#: Upper bounds of the saga duration histogram, in seconds: a saga takes well under a
#: second when all goes well, seconds with retries, and may run to the sweeper's give-up
#: limit (15 minutes by default).
DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800)

#: Dead-letter statuses always reported (0 when none), so a dashboard's series exist.
DEAD_LETTER_STATUSES: tuple[str, ...] = ("dead", "redriven", "resolved", "purged")

DEFAULT_PORT = 9808
DEFAULT_ADDRESS = "127.0.0.1"


class SagaCollector(Collector):
    """Reads every metric from the runtime's databases and broker at each scrape."""

    def __init__(self, rt: System, broker_timeout: float = 2.0) -> None:
        self.rt = rt
        self.broker_timeout = broker_timeout

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "checkout_metrics_source_up", "1 if the source could be read at this scrape, else 0", labels=["source"]
        )
        sources: tuple[tuple[str, Callable[[], Iterable[Metric]]], ...] = (
            ("orders", self._orders),
            ("admission", self._admission),
            ("steps", self._steps),
            ("dead_letters", self._dead_letters),
            ("broker", self._queues),
        )
        for source, read in sources:
            try:
                metrics = list(read())
            except Exception:  # one source down must not hide the others
                log.warning("metrics: could not read %s", source, exc_info=True)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from metrics
        yield up

    def _orders(self) -> Iterator[Metric]:
        counts = self.rt.order.saga_counts()
        yield CounterMetricFamily("checkout_orders_placed", "Orders placed", value=counts.placed)
        yield CounterMetricFamily("checkout_sagas_started", "Sagas dispatched", value=counts.started)
        yield CounterMetricFamily(
            "checkout_sagas_completed",
            "Sagas that ended COMPLETED",
            value=counts.by_status.get(OrderStatus.COMPLETED, 0),
        )
        cancelled = CounterMetricFamily("checkout_sagas_cancelled", "Sagas that ended CANCELLED", labels=["reason"])
        for reason, count in sorted(counts.cancelled_by_reason.items()):
            cancelled.add_metric([reason], count)
        yield cancelled
        yield GaugeMetricFamily(
            "checkout_sagas_in_flight",
            "Sagas still running (PENDING)",
            value=counts.by_status.get(OrderStatus.PENDING, 0),
        )
        yield GaugeMetricFamily(
            "checkout_sagas_needing_attention",
            "Sagas parked because a compensation could not finish (NEEDS_ATTENTION)",
            value=counts.by_status.get(OrderStatus.NEEDS_ATTENTION, 0),
        )
        histogram = HistogramMetricFamily(
            "checkout_saga_duration_seconds",
            "Time from placement to COMPLETED or CANCELLED",
            labels=["status"],
        )
        found = {d.status: d for d in self.rt.order.saga_durations(DURATION_BUCKETS)}
        for status in (OrderStatus.COMPLETED, OrderStatus.CANCELLED):  # both series exist from the start
            durations = found.get(status)
            cumulative = durations.buckets if durations else tuple((bound, 0) for bound in DURATION_BUCKETS)
            total = durations.count if durations else 0
            buckets = [(_bound(bound), count) for bound, count in cumulative] + [("+Inf", total)]
            histogram.add_metric([status.lower()], buckets, durations.sum_seconds if durations else 0.0)
        yield histogram

    def _admission(self) -> Iterator[Metric]:
        counts = self.rt.order.saga_counts()
        load = self.rt.admission.current()
        yield CounterMetricFamily(
            "checkout_admission_admitted", "Orders admitted by admission control (orders placed)", value=counts.placed
        )
        yield CounterMetricFamily(
            "checkout_admission_refused", "Orders refused as busy by admission control", value=self.rt.order.refusals()
        )
        yield GaugeMetricFamily(
            "checkout_admission_backlog_seconds",
            "The admission signal: sagas in flight / recent finish rate, at most the oldest one's age",
            value=load.backlog_seconds,
        )
        yield GaugeMetricFamily(
            "checkout_admission_target_seconds",
            "Backlog above which new orders are refused (0: admission control off)",
            value=self.rt.settings.admission_target_seconds,
        )
        yield GaugeMetricFamily(
            "checkout_admission_finish_rate",
            "Sagas finished per second over the admission window",
            value=load.finish_rate,
        )

    def _steps(self) -> Iterator[Metric]:
        steps = CounterMetricFamily(
            "checkout_steps", "Saga steps and compensations recorded, by outcome", labels=["service", "step", "outcome"]
        )
        retries = CounterMetricFamily(
            "checkout_step_retries", "Retries the recorded steps and compensations took", labels=["service", "step"]
        )
        for service in SERVICES:
            per_step: dict[str, int] = {}
            for stats in self.rt.databases[service].step_stats():
                steps.add_metric([service, stats.step, stats.outcome], stats.count)
                per_step[stats.step] = per_step.get(stats.step, 0) + stats.retries
            for step, count in sorted(per_step.items()):
                retries.add_metric([service, step], count)
        yield steps
        yield retries

    def _dead_letters(self) -> Iterator[Metric]:
        letters = GaugeMetricFamily(
            "checkout_dead_letters", "Dead letters in each service's store, by status", labels=["service", "status"]
        )
        counts = {(service, status.lower()): n for (service, status), n in self.rt.dead_letters.counts().items()}
        statuses = sorted(set(DEAD_LETTER_STATUSES) | {status for _, status in counts})
        for service in self.rt.settings.queues:
            for status in statuses:
                letters.add_metric([service, status], counts.get((service, status), 0))
        yield letters

    def _queues(self) -> Iterator[Metric]:
        messages = GaugeMetricFamily(
            "checkout_queue_messages", "Messages waiting in the queue (not yet delivered to a worker)", labels=["queue"]
        )
        consumers = GaugeMetricFamily("checkout_queue_consumers", "Consumers of the queue (RabbitMQ)", labels=["queue"])
        amqp = self.rt.settings.broker_kind == "amqp"
        for queue, (waiting, consuming) in queue_depths(self.rt, self.broker_timeout).items():
            messages.add_metric([queue], waiting)
            if amqp:
                consumers.add_metric([queue], consuming)
        yield messages
        if amqp:
            yield consumers


def _bound(bound: float) -> str:
    return str(float(bound))


def queue_depths(rt: System, timeout: float = 2.0) -> dict[str, tuple[int, int]]:
    """Queue name -> (messages waiting, consumers) of the system's queues
    (:func:`app.messaging.queues.queue_depths`)."""
    return broker_queue_depths(rt.celery, rt.settings, timeout)


def registry(rt: System) -> CollectorRegistry:
    """A registry holding only the saga collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SagaCollector(rt))
    return reg


def exposition(rt: System) -> str:
    """The metrics in Prometheus' text format, as one scrape would return them."""
    return generate_latest(registry(rt)).decode()


def serve(rt: System, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS) -> None:
    """Serve ``/metrics`` on ``address:port`` until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    stop = threading.Event()
    server, thread = start_http_server(port, addr=address, registry=registry(rt))
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"serving saga metrics on http://{address}:{server.server_port}/metrics", flush=True)
    try:
        stop.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
