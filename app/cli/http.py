"""``python -m app api``: serve the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

cli = typer.Typer()


@cli.command("api", short_help="serve the HTTP API (127.0.0.1:8000; embedded unless a broker is configured)")
def api(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="address to bind (0.0.0.0 for every interface)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="port to listen on")] = 8000,
) -> int:
    """Serve the HTTP API until stopped: POST /orders, GET /orders, /orders/{id}, its timeline
    and its Server-Sent Events, /health, /metrics; the OpenAPI document at /openapi.json and
    its pages at /docs. Embedded by default: the in-process workers start with it. With a
    broker configured it is the order service's front door, and the workers run separately.
    With CHECKOUT_API_TOKEN set, every endpoint but /health needs `Authorization: Bearer`."""
    from app.http import serve

    serve(host, port)
    return 0
