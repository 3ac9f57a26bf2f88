"""Bearer-token authentication of every endpoint but ``/health``: ``CHECKOUT_API_TOKEN``
guards the API, and ``CHECKOUT_OPERATOR_TOKEN``, when set, guards the operator endpoints
instead (the API token does not open them)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths answered without a token: a load balancer's or orchestrator's health probe.
OPEN_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class Lock:
    """The token a part of the API needs, and the setting it comes from (for the 401)."""

    token: str
    setting: str


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (``""``: every path is)."""
    return not prefix or path == prefix or path.startswith(prefix.rstrip("/") + "/")


class BearerAuth:
    """ASGI middleware: a request without ``Authorization: Bearer <token>`` is answered 401.

    ``locks`` maps a path prefix to its lock (``""`` for every path); a request needs the
    token of the longest prefix it is under, and one under none is let through."""

    def __init__(self, app: ASGIApp, locks: Mapping[str, Lock]) -> None:
        self.app = app
        self.locks = sorted(locks.items(), key=lambda item: len(item[0]), reverse=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lock = self._lock(scope) if scope["type"] == "http" and scope["path"] not in OPEN_PATHS else None
        if lock is None or self._authorized(scope, lock.token.encode()):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": f"missing or wrong bearer token: send Authorization: Bearer <{lock.setting}>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _lock(self, scope: Scope) -> Lock | None:
        return next((lock for prefix, lock in self.locks if under(scope["path"], prefix)), None)

    @staticmethod
    def _authorized(scope: Scope, token: bytes) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
        return False
