"""Speaking to the HTTP API as a client does: an order's Server-Sent Events read to their end."""

from __future__ import annotations

import json
from typing import Any

import httpx


def status_events(client: httpx.Client, order_id: str) -> list[dict[str, Any]]:
    """Read the order's event stream until the server ends it; the ``status`` events' data."""
    seen: list[dict[str, Any]] = []
    with client.stream("GET", f"/orders/{order_id}/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.removeprefix("event:").strip()
            elif line.startswith("data:") and kind == "status":
                seen.append(json.loads(line.removeprefix("data:")))
    return seen
