"""The exporter is chosen by the standard OTEL_* variables, in a real process: ``python -m app
place`` (embedded, in a process of its own) with ``OTEL_TRACES_EXPORTER=console`` prints its
spans as the console exporter's JSON; with ``otlp`` it POSTs them as OTLP protobuf to
``OTEL_EXPORTER_OTLP_ENDPOINT`` (here a small HTTP server of the test's, on a free port), as
it does with that endpoint alone; with
neither (nor ``CHECKOUT_TRACE_FILE``) nothing is exported and only the outcome is printed.
Each run places an order that completes, and the span of the placement names it."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from app.messaging.tracing import ORDER_ID
from tests.support.cluster import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

OUTCOME = re.compile(r"^([0-9a-f-]{36}) COMPLETED$", re.MULTILINE)


def place(tmp_path: Path, *python: str, **otel: str) -> subprocess.CompletedProcess[str]:
    """`python -m app place MUG-01`, embedded in ``tmp_path``, with only the OTEL_* given
    (``python``: options of the interpreter's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "OTEL_"))}
    env.update(CHECKOUT_DATA_DIR=str(tmp_path), **otel)
    command = [sys.executable, *python, "-m", "app", "place", "MUG-01"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def order_id_of(stdout: str) -> str:
    found = OUTCOME.findall(stdout)
    assert len(found) == 1, stdout[-2000:]
    return str(found[0])


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed (one per span, indented), in order."""
    decoder = json.JSONDecoder()
    spans = []
    for start in (m.start() for m in re.finditer(r"^\{$", stdout, re.MULTILINE)):
        obj, _ = decoder.raw_decode(stdout, start)
        spans.append(obj)
    return spans


def test_console_exporter_prints_the_spans_as_json(tmp_path: Path) -> None:
    done = place(tmp_path, OTEL_TRACES_EXPORTER="console")
    order_id = order_id_of(done.stdout)
    spans = console_spans(done.stdout)
    (placed,) = [s for s in spans if s["name"] == "place_order"]
    assert placed["attributes"][ORDER_ID] == order_id and placed["parent_id"] is None
    assert placed["resource"]["attributes"]["service.name"] == "checkout"
    trace_id = placed["context"]["trace_id"]
    runs = {s["name"] for s in spans if s["context"]["trace_id"] == trace_id and s["name"].startswith("run/")}
    assert {"run/order.start", "run/inventory.reserve", "run/payment.authorize"} <= runs, runs


class Collector(ThreadingHTTPServer):
    """Accepts OTLP/HTTP ``POST /v1/traces`` and keeps each decoded request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.received = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.server.paths.append(self.path)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        self.server.received.set()
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("named", [True, False], ids=["otlp-named", "endpoint-only"])
def test_otlp_exporter_posts_the_spans_to_the_endpoint(tmp_path: Path, collector: Collector, named: bool) -> None:
    """``OTEL_TRACES_EXPORTER=otlp``, or an OTLP endpoint alone, which implies it."""
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint} | ({"OTEL_TRACES_EXPORTER": "otlp"} if named else {})
    done = place(tmp_path, **otel)
    order_id = order_id_of(done.stdout)
    assert "{" not in done.stdout, "the otlp exporter printed spans"
    assert collector.requests, f"nothing POSTed (paths: {collector.paths}); stderr: {done.stderr[-2000:]}"
    assert set(collector.paths) == {"/v1/traces"}
    spans = []
    for request in collector.requests:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                spans.extend((service, span) for span in scope_spans.spans)
    placed = [span for service, span in spans if span.name == "place_order" and service == "checkout"]
    assert len(placed) == 1, [span.name for _, span in spans]
    attributes = {a.key: a.value.string_value for a in placed[0].attributes}
    assert attributes[ORDER_ID] == order_id and not placed[0].parent_span_id
    in_trace = {span.name for _, span in spans if span.trace_id == placed[0].trace_id}
    assert {"run/order.start", "run/inventory.reserve"} <= in_trace, in_trace


def test_with_no_exporter_named_nothing_is_exported(tmp_path: Path) -> None:
    done = place(tmp_path, "-X", "importtime")  # no OTEL_*, no CHECKOUT_TRACE_FILE
    order_id = order_id_of(done.stdout)
    assert done.stdout == f"{order_id} COMPLETED\n"
    assert "import time:" in done.stderr  # the interpreter listed what it imported ...
    assert "opentelemetry" not in done.stderr  # ... and OpenTelemetry is not among it
    assert not list(tmp_path.rglob("*.jsonl"))
