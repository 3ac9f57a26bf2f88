"""An order's traces, read back from the span file (``CHECKOUT_TRACE_FILE``): what
``python -m app orders show ID --trace`` prints.

The file holds one JSON object a line, as :mod:`app.messaging.spanfile` writes them. An
order's traces are those with a span naming the order (``checkout.order_id``) or named by
the ``traceparent`` of one of its events, plus the traces linked to them (a replay's).
Plain reading: nothing here imports OpenTelemetry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.messaging.tracing import ORDER_ID, SERVICE


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start: int  # ns since the epoch
    end: int
    status: str = "UNSET"
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace_id, span_id)

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6

    @property
    def shown_service(self) -> str:
        """The service that ran it: the task's own (one process may run several, embedded),
        else the process's service name."""
        return str(self.attributes.get(SERVICE) or self.service)


def _span(record: dict[str, Any]) -> Span:
    return Span(
        trace_id=str(record["trace_id"]),
        span_id=str(record["span_id"]),
        parent_id=record.get("parent_id"),
        name=str(record["name"]),
        service=str(record.get("service", "")),
        start=int(record["start"]),
        end=int(record.get("end") or record["start"]),
        status=str(record.get("status", "UNSET")),
        attributes=dict(record.get("attributes") or {}),
        links=tuple((str(link["trace_id"]), str(link["span_id"])) for link in record.get("links") or ()),
    )


def read_spans(path: Path) -> list[Span]:
    """Every span in the file; a line that is not a span (cut short by a crash) is skipped.
    Raises ``OSError`` when the file cannot be read."""
    spans = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                spans.append(_span(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue
    return spans


def trace_id_of(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


def order_spans(spans: Iterable[Span], order_id: str, traceparents: Iterable[str | None] = ()) -> list[Span]:
    """The spans of the order's traces, and of the traces linked to them."""
    spans = list(spans)
    traces = {s.trace_id for s in spans if s.attributes.get(ORDER_ID) == order_id}
    traces |= {t for t in map(trace_id_of, traceparents) if t is not None}
    traces |= {s.trace_id for s in spans if any(t in traces for t, _ in s.links)}
    return [s for s in spans if s.trace_id in traces]


def tree(spans: Iterable[Span]) -> list[tuple[int, Span]]:
    """``(depth, span)`` in tree order: each root (a span whose parent is not in the file),
    then its children, each level by start time; the roots by start time too."""
    spans = sorted(spans, key=lambda s: (s.start, s.end))
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for s in spans:
        if s.parent_id is not None and s.parent_id in ids:
            children.setdefault(s.parent_id, []).append(s)
        else:
            roots.append(s)
    shown: list[tuple[int, Span]] = []
    stack = [(0, s) for s in reversed(roots)]
    while stack:
        depth, s = stack.pop()
        shown.append((depth, s))
        stack.extend((depth + 1, c) for c in reversed(children.get(s.span_id, [])))
    return shown


def render(spans: list[Span]) -> list[str]:
    """The lines of the span tree, trace by trace: indented name, service, duration (and
    the saga step, an error, a link to the cause)."""
    lines = []
    by_trace: dict[str, list[Span]] = {}
    for s in sorted(spans, key=lambda s: s.start):
        by_trace.setdefault(s.trace_id, []).append(s)
    for trace_id, members in by_trace.items():
        took = (max(s.end for s in members) - min(s.start for s in members)) / 1e6
        lines.append(f"trace {trace_id}  {len(members)} spans  {took:.1f} ms")
        for depth, s in tree(members):
            extra = []
            step = s.attributes.get("checkout.saga_step")
            if step:
                extra.append(f"step {step}")
            if s.status == "ERROR":
                extra.append("error")
            extra += [f"linked to trace {t}" for t, _ in s.links]
            suffix = f"  ({', '.join(extra)})" if extra else ""
            lines.append(f"{'  ' * (depth + 1)}{s.name}  [{s.shown_service}]  {s.duration_ms:.1f} ms{suffix}")
    return lines
