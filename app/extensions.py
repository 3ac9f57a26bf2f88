"""Extensions: consumers added to the system without changing any of its services.

An extension subscribes to event types. Each event of those types is delivered, after the
transaction that wrote it commits, to the task ``<name>.handle`` on the extension's own
queue ``<name>``, served by its own worker (``celery -A workers.<name> worker -Q <name>``;
embedded mode starts one). The extension keeps its own tables, prefixed ``<name>_``, next to
the standard ones (:func:`app.persistence.db.standard_tables`): its inbox makes each event take effect
once however often it is delivered or replayed, and its dead letters keep what it could not
read.

An extension has no part in the saga: it emits nothing and nothing waits for it, so it can
be added, removed or fall behind without an order noticing. A new one catches up on what
happened before it existed by replay (``python -m app replay --since 30d --to <name>.handle``):
the event logs keep every event, and the inbox makes a second replay harmless.

Writing one (``CHECKOUT_EXTENSIONS=notifications=package.module:extension``)::

    metadata = MetaData()
    tables = standard_tables("notifications", metadata)
    sent = Table("notifications_sent", metadata, Column("order_id", String(64), primary_key=True), ...)

    def on_completed(uow: UnitOfWork, env: Envelope) -> None:
        uow.conn.execute(insert(sent).values(order_id=env.key, ...))

    extension = Extension("notifications", metadata, tables, {"OrderCompleted": on_completed})

A handler runs in the extension's own transaction, with the event's inbox row. It must not
call out to a system that cannot take part in that transaction (a mail server, say) as if
the transaction made it happen once: record what to send, and send it from a table.

Plain code over the databases: no Celery here (``app/messaging/tasks/extensions.py`` defines the task).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import MetaData

from app.domain.events import REGISTRY, Envelope
from app.persistence.db import Database, UnitOfWork, utcnow
from app.persistence.tables import StandardTables, standard_tables

#: What an extension's module imports: this module is its one import (the older paths
#: ``app.db`` and ``app.events`` stay too).
__all__ = [
    "Database",
    "Envelope",
    "Extension",
    "ExtensionError",
    "Handler",
    "NotSubscribed",
    "StandardTables",
    "UnitOfWork",
    "load",
    "load_all",
    "standard_tables",
    "utcnow",
    "with_extensions",
]

#: What an extension does with one event it subscribes to, in its own transaction.
Handler = Callable[[UnitOfWork, Envelope], None]


class ExtensionError(ValueError):
    """An extension that cannot be loaded or is not well formed; the message says what to fix."""


class NotSubscribed(ValueError):
    """An event was sent to an extension that does not subscribe to its type."""


@dataclass(frozen=True)
class Extension:
    """A consumer of events outside the saga, with its own queue, worker and tables.

    ``migrated``: its tables have a line of Alembic revisions of their own
    (``app/persistence/migrations/versions/<name>/``, the built-in ones); otherwise they are created
    from ``metadata`` where missing when its worker starts, and changing them is the
    extension's own business.
    """

    name: str
    metadata: MetaData
    tables: StandardTables
    handlers: Mapping[str, Handler]
    migrated: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.handlers) - set(REGISTRY))
        if unknown:
            raise ExtensionError(f"extension {self.name}: unknown event type(s) {', '.join(unknown)}")
        if not self.handlers:
            raise ExtensionError(f"extension {self.name}: subscribes to no event type")
        stray = sorted(t for t in self.metadata.tables if not t.startswith(f"{self.name}_"))
        if stray:
            raise ExtensionError(f"extension {self.name}: table(s) {', '.join(stray)} must be named {self.name}_*")
        if self.tables.inbox.name not in self.metadata.tables:
            raise ExtensionError(f"extension {self.name}: its standard tables must be in its metadata")

    @property
    def task(self) -> str:
        """The one task the extension's events are delivered to (on its own queue)."""
        return f"{self.name}.handle"

    @property
    def subscribes(self) -> tuple[str, ...]:
        return tuple(self.handlers)

    def receive(self, db: Database, env: Envelope) -> bool:
        """Handle one event once: False if the extension's inbox already holds it."""
        handler = self.handlers.get(env.event_type)
        if handler is None:
            raise NotSubscribed(
                f"{self.name} does not subscribe to {env.event_type} (it takes {', '.join(self.handlers)})"
            )

        def work(uow: UnitOfWork) -> bool:
            if not uow.first_time(self.task, env.event_id):
                return False
            handler(uow, env)
            return True

        return db.run(work, causation_id=env.event_id)


def load(name: str, target: str) -> Extension:
    """The extension ``target`` (``package.module:attribute``) names, checked to be ``name``."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExtensionError(f"extension {name}: cannot import {module_name} ({exc})") from exc
    found = getattr(module, attribute, None)
    if not isinstance(found, Extension):
        raise ExtensionError(f"extension {name}: {target} is {type(found).__name__}, not an app.extensions.Extension")
    if found.name != name:
        raise ExtensionError(f"extension {name}: {target} is named {found.name!r}; name it as its definition does")
    return found


def load_all(targets: Mapping[str, str]) -> dict[str, Extension]:
    """The extensions of ``Settings.extension_targets``, by name."""
    return {name: load(name, target) for name, target in targets.items()}


def with_extensions(table: Mapping[str, Iterable[str]], extensions: Iterable[Extension]) -> dict[str, tuple[str, ...]]:
    """A subscription table with each extension's task added to the events it subscribes
    to (a new table: the services' own tables are never changed)."""
    merged = {event_type: tuple(tasks) for event_type, tasks in table.items()}
    for ext in extensions:
        for event_type in ext.subscribes:
            merged[event_type] = (*merged.get(event_type, ()), ext.task)
    return merged
