"""The saga console: server-rendered pages over the runtime's read side, kept live by htmx
polling small partials. Everything it loads is served from ``static/`` (htmx, Mermaid):
nothing comes from a CDN. :func:`mount` adds it to the HTTP API; :data:`OPERATOR_PAGES`
are its pages the operator's token guards."""

from app.http.console.operator import OPERATOR_PAGES
from app.http.console.routes import mount

__all__ = ["OPERATOR_PAGES", "mount"]
