"""The names every process agrees on, without loading the settings: the services (each a
queue, a worker and a database) and the extensions that ship with the system."""

from __future__ import annotations

SERVICES: tuple[str, ...] = ("order", "inventory", "payment", "shipping")

#: Consumers that ship with the system and can be added by name (``CHECKOUT_EXTENSIONS``):
#: name -> ``module:attribute`` of their :class:`app.extensions.Extension`.
BUILTIN_EXTENSIONS: dict[str, str] = {"analytics": "app.analytics:extension"}
