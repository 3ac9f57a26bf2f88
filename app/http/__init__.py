"""The HTTP API: the order service's front door over HTTP (``python -m app api``).

A thin adapter over :mod:`app.api` and the read side the command line uses: each route
parses the request, calls the same function ``place_order`` or ``python -m app orders``
calls, and maps its answer or its error to a status code. :func:`create_app` builds the
FastAPI application over a running :class:`app.api.System`; :func:`serve` runs it.
"""

from app.http.app import create_app
from app.http.server import serve

__all__ = ["create_app", "serve"]
