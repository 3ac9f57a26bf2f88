"""Bearer-token authentication of every endpoint but ``/health``: ``CHECKOUT_API_TOKEN``
guards the API, and ``CHECKOUT_OPERATOR_TOKEN``, when set, guards the operator endpoints
instead (the API token does not open them).

A browser cannot send a bearer header, so the console signs it in: ``/console/sign-in``
takes a token and sets a cookie for it (:func:`set_sign_in_cookies`), which opens the
console's paths — ``/`` and those under ``/console`` — and no other. The cookie holds an
HMAC of the token, not the token, so it is no bearer token for the JSON API.

Cross-site requests: the cookie is ``SameSite=Strict`` (``Secure`` over https), and a
request other than GET or HEAD that the cookie would open must carry an ``Origin`` header
naming the host it was sent to — every browser sends one with such a request, and a page
of another site cannot forge it — or it is refused, 403. A console GET that the cookie
does not open is sent to the sign-in page (303); any other refused request is a 401."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlencode, urlsplit

from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: The console's sign-in page (open: it is where a browser without a cookie is sent).
SIGN_IN = "/console/sign-in"

#: Paths answered without a token: a load balancer's or orchestrator's health probe, and the sign-in page.
OPEN_PATHS = frozenset({"/health", SIGN_IN})

#: Path prefixes answered without a token: the console's files (its CSS, htmx, Mermaid — no data),
#: which the sign-in page uses too, and the API's (Swagger UI's, for ``/docs``).
OPEN_PREFIXES = ("/console/static", "/static")

#: Methods that change nothing: a signed-in browser's cookie opens them from any page.
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Lock:
    """The token a part of the API needs, and the setting it comes from (for the 401)."""

    token: str
    setting: str

    @property
    def cookie(self) -> str:
        """The name of the cookie a signed-in browser keeps for this token."""
        return "console_" + self.setting.removeprefix("CHECKOUT_").removesuffix("_TOKEN").lower()

    @cached_property
    def proof(self) -> str:
        """The cookie's value: an HMAC of the token (the token itself never leaves in a cookie);
        worked out once, not on every request the cookie comes with."""
        return hmac.new(self.token.encode(), b"checkout console sign-in", hashlib.sha256).hexdigest()


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (``""``: every path is)."""
    return not prefix or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def console_path(path: str) -> bool:
    """Whether ``path`` is the console's (the only paths a sign-in cookie opens)."""
    return path == "/" or under(path, "/console")


def set_sign_in_cookies(response: Response, locks: Iterable[Lock], token: str, *, secure: bool) -> list[str]:
    """Set on ``response`` the cookie of each lock ``token`` opens; the settings they come from."""
    opened = []
    for lock in locks:
        if hmac.compare_digest(token.encode(), lock.token.encode()):
            response.set_cookie(lock.cookie, lock.proof, httponly=True, samesite="strict", secure=secure, path="/")
            opened.append(lock.setting)
    return opened


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site (anything else is ``/``). A browser
    drops tabs and newlines from a URL and reads ``\\`` as ``/``, so a path with either could
    become ``//elsewhere``: it is refused too."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return "/"
    return target


class BearerAuth:
    """ASGI middleware: a request without ``Authorization: Bearer <token>`` (or, on the
    console's paths, the sign-in cookie of that token) is refused.

    ``locks`` maps a path prefix to its lock (``""`` for every path); a request needs the
    token of the longest prefix it is under, and one under none is let through."""

    def __init__(self, app: ASGIApp, locks: Mapping[str, Lock]) -> None:
        self.app = app
        self.locks = sorted(locks.items(), key=lambda item: len(item[0]), reverse=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lock = self._lock(scope) if scope["type"] == "http" and not self._open(scope["path"]) else None
        if lock is None or self._authorized(scope, lock.token.encode()):
            await self.app(scope, receive, send)
            return
        if console_path(scope["path"]) and self._signed_in(scope, lock):
            if scope["method"] in SAFE_METHODS or same_origin(scope):
                await self.app(scope, receive, send)
                return
            refused: Response = JSONResponse({"detail": "cross-site request refused: its Origin is not this site"}, 403)
        elif console_path(scope["path"]) and scope["method"] in SAFE_METHODS and wants_html(scope):
            back = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
            refused = RedirectResponse(f"{SIGN_IN}?{urlencode({'next': back, 'needs': lock.setting})}", 303)
        else:
            refused = JSONResponse(
                {"detail": f"missing or wrong bearer token: send Authorization: Bearer <{lock.setting}>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await refused(scope, receive, send)

    def _lock(self, scope: Scope) -> Lock | None:
        return next((lock for prefix, lock in self.locks if under(scope["path"], prefix)), None)

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or any(under(path, prefix) for prefix in OPEN_PREFIXES)

    @staticmethod
    def _authorized(scope: Scope, token: bytes) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
        return False

    @staticmethod
    def _signed_in(scope: Scope, lock: Lock) -> bool:
        held = cookie_parser(header(scope, b"cookie") or "").get(lock.cookie)
        return held is not None and hmac.compare_digest(held.encode(), lock.proof.encode())


def header(scope: Scope, wanted: bytes) -> str | None:
    return next((value.decode("latin-1") for name, value in scope["headers"] if name == wanted), None)


def same_origin(scope: Scope) -> bool:
    """Whether the request's ``Origin`` names the host it was sent to (``Host``)."""
    origin, host = header(scope, b"origin"), header(scope, b"host")
    return origin is not None and host is not None and urlsplit(origin).netloc == host


def wants_html(scope: Scope) -> bool:
    """Whether a browser asks (a page, not htmx's partial or an API client)."""
    return "text/html" in (header(scope, b"accept") or "") and header(scope, b"hx-request") is None
