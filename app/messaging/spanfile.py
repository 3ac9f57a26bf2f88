"""A span exporter that appends each finished span to a file as one JSON line
(``CHECKOUT_TRACE_FILE``): what ``python -m app orders show ID --trace`` reads, and what
the tests read. Many processes may append to one file: each span is one ``write`` of one
line to a file opened with ``O_APPEND``, so lines never interleave.

Each line: ``trace_id`` and ``span_id`` (hex), ``parent_id`` (hex or null), ``name``,
``kind``, ``service`` (the resource's ``service.name``), ``start`` and ``end`` (ns since
the epoch), ``status``, ``attributes`` and ``links`` (``[{trace_id, span_id}]``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": str(resource.get("service.name", "")),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in span.attributes.items()}
        if span.attributes
        else {},
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            data = "".join(json.dumps(span_record(s), separators=(",", ":")) + "\n" for s in spans).encode()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    for line in data.splitlines(keepends=True):
                        os.write(fd, line)
                finally:
                    os.close(fd)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass
