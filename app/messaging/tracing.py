"""OpenTelemetry traces across the saga: one trace per order, with spans from every service.

Off unless asked for: with no ``OTEL_TRACES_EXPORTER`` (nor an OTLP endpoint) and no
``CHECKOUT_TRACE_FILE``, :func:`install` returns at once, OpenTelemetry is never imported
and every helper here is a no-op. When on, :func:`install` (once per process: in each pool
child on ``worker_process_init``, in the producers when they start) sets a tracer provider
with the exporters the standard variables name, and ``opentelemetry-instrumentation-celery``
adds a span per task sent and run, carrying the W3C trace context in the message headers.

On top of that:

* every task span says which service ran it, for which order and which saga step
  (:data:`SERVICE`, :data:`ORDER_ID`, :data:`SAGA_STEP`, :data:`EVENT_TYPE`);
* every event carries the ``traceparent`` of the transaction that wrote it (set by
  ``UnitOfWork.emit`` through :func:`app.persistence.tracecontext.set_trace_context`), and the
  publisher sends it within that context (:func:`continued`): an event published late by
  the outbox sweep or the relay process is still part of its order's trace;
* a replayed event is sent in a trace of its own, linked to its cause (:func:`replaying`);
* what the saga sweeper sends to re-drive an overdue order joins that order's trace, in a
  span linked to the sweep run (:func:`redriving`).
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

log = logging.getLogger("checkout.tracing")

SERVICE = "checkout.service"
ORDER_ID = "checkout.order_id"
SAGA_STEP = "checkout.saga_step"
EVENT_TYPE = "checkout.event_type"
#: The event a replay sends again.
EVENT_ID = "checkout.event_id"
#: What a link says the linked span is: ``cause`` (a replay's), ``sweep`` (a re-drive's).
LINK = "checkout.link"

TRACER = "checkout"

_installed_pid: int | None = None
_tracer: Any = None
#: Set while a replay sends: the event's own trace context is linked, not continued.
_replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("replaying", default=False)


def exporter_names(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the standard variables ask for: ``OTEL_TRACES_EXPORTER`` (comma-separated;
    ``none`` for none), else ``otlp`` when an OTLP endpoint is set; nothing when
    ``OTEL_SDK_DISABLED=true``."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [n for n in (part.strip().lower() for part in named.split(",")) if n and n != "none"]


def wanted(trace_file: Path | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process should trace at all (cheap: imports nothing)."""
    if (os.environ if env is None else env).get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return trace_file is not None or bool(exporter_names(env))


def enabled() -> bool:
    """Whether this process traces (a forked child inherits its parent's tracing)."""
    return _installed_pid is not None


def install(service_name: str, trace_file: Path | None, step_of_task: Mapping[str, str] | None = None) -> bool:
    """Trace this process, if the environment asks for it (see the module's docstring).
    Once per process (a pool child forked from a traced process keeps its parent's);
    returns whether tracing is on. ``OTEL_SERVICE_NAME`` overrides
    ``service_name``; ``step_of_task`` maps task names to the saga step they run."""
    global _installed_pid, _tracer
    if enabled():
        return True
    if not wanted(trace_file):
        return False
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    from app.persistence.tracecontext import set_trace_context

    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for processor in _processors(trace_file):
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    _connect(dict(step_of_task or {}))
    _tracer = provider.get_tracer(TRACER)
    set_trace_context(current_traceparent)
    _installed_pid = os.getpid()
    log.info("tracing on as %s", name)
    return True


def _processors(trace_file: Path | None) -> list[Any]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    processors: list[Any] = []
    if trace_file is not None:
        from app.messaging.spanfile import JsonLinesExporter

        processors.append(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    for name in exporter_names():
        if name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_OTLP_*
        else:
            exporter = _entry_point_exporter(name)
            if exporter is None:
                log.warning("OTEL_TRACES_EXPORTER names %r: no such span exporter installed; ignored", name)
            else:
                processors.append(BatchSpanProcessor(exporter))
    return processors


def _entry_point_exporter(name: str) -> Any:
    from importlib.metadata import entry_points

    for point in entry_points(group="opentelemetry_traces_exporter"):
        if point.name == name:
            return point.load()()
    return None


def _connect(step_of_task: dict[str, str]) -> None:
    """Say on each task's span which service, order and step it is (after the
    instrumentor's own prerun handler, which starts the span)."""
    from celery import signals
    from opentelemetry import trace

    from app.messaging.telemetry import CORRELATION

    @signals.task_prerun.connect(weak=False)
    def _annotate(task: Any = None, **_: Any) -> None:
        span = trace.get_current_span()
        if task is None or not span.is_recording():
            return
        span.set_attribute(SERVICE, task.name.split(".", 1)[0])
        order_id = task.request.get(CORRELATION)
        if order_id:
            span.set_attribute(ORDER_ID, str(order_id))
        step = step_of_task.get(task.name)
        if step is not None:
            span.set_attribute(SAGA_STEP, step)
        args = task.request.args or ()
        if args and isinstance(args[0], dict) and isinstance(args[0].get("event_type"), str):
            span.set_attribute(EVENT_TYPE, args[0]["event_type"])


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None (none, or tracing off)."""
    if not enabled():
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _context_of(traceparent: str) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def continued(traceparent: str | None) -> AbstractContextManager[Any]:
    """Within the context of the span ``traceparent`` names (an event's writer): what is sent
    here joins that trace. A no-op when tracing is off, with no (or a malformed) traceparent,
    or while replaying."""
    if traceparent is None or not enabled() or _replaying.get():
        return nullcontext()
    return _attached(traceparent)


@contextmanager
def _attached(traceparent: str) -> Iterator[None]:
    from opentelemetry import context, trace

    ctx = _context_of(traceparent)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        yield
        return
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def span(name: str, **attributes: str) -> AbstractContextManager[Any]:
    """A span of this process's own (placing an order), or a no-op when tracing is off; it
    yields the span (or None), so attributes known only later can be set on it."""
    if not enabled():
        return nullcontext()
    started: AbstractContextManager[Any] = _tracer.start_as_current_span(name, attributes=attributes)
    return started


def replaying(name: str, traceparent: str | None, **attributes: str) -> AbstractContextManager[Any]:
    """A new trace for one event sent again by a replay, linked to the span that wrote the
    event (its cause). A no-op when tracing is off."""
    if not enabled():
        return nullcontext()
    return _replay_span(name, traceparent, attributes)


@contextmanager
def _replay_span(name: str, traceparent: str | None, attributes: dict[str, str]) -> Iterator[Any]:
    from opentelemetry import context, trace

    links = []
    if traceparent is not None:
        cause = trace.get_current_span(_context_of(traceparent)).get_span_context()
        if cause.is_valid:
            links.append(trace.Link(cause, {LINK: "cause"}))
    token = _replaying.set(True)
    try:
        with _tracer.start_as_current_span(
            name, context=context.Context(), links=links, attributes=attributes, kind=trace.SpanKind.PRODUCER
        ) as current:
            yield current
    finally:
        _replaying.reset(token)


def redriving(name: str, traceparent: str | None, **attributes: str) -> AbstractContextManager[Any]:
    """A span in the trace ``traceparent`` names (the order's, from its latest event), for
    what the sweeper sends to re-drive the order, linked to the current span (the sweep
    run), which it is not a child of. With no (or a malformed) traceparent, a child of the
    current span. A no-op when tracing is off."""
    if not enabled():
        return nullcontext()
    return _redrive_span(name, traceparent, attributes)


@contextmanager
def _redrive_span(name: str, traceparent: str | None, attributes: dict[str, str]) -> Iterator[Any]:
    from opentelemetry import trace

    sweep = trace.get_current_span().get_span_context()
    parent = _context_of(traceparent) if traceparent is not None else None
    if parent is not None and not trace.get_current_span(parent).get_span_context().is_valid:
        parent = None
    links = [trace.Link(sweep, {LINK: "sweep"})] if parent is not None and sweep.is_valid else []
    with _tracer.start_as_current_span(name, context=parent, links=links, attributes=attributes) as current:
        yield current
