"""The saga console: server-rendered pages over the runtime's read side, kept live by htmx
polling small partials. Everything it loads is served from ``static/`` (htmx, Mermaid):
nothing comes from a CDN. :func:`mount` adds it to the HTTP API."""

from app.http.console.routes import mount

__all__ = ["mount"]
