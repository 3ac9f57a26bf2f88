"""The extensions' tasks: consumers outside the saga, each on its own queue
(``app/extensions.py``), named for the extension (``<name>.handle``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery import Task

from app.domain.events import Envelope
from app.extensions import Extension, NotSubscribed
from app.messaging.tasks.kit import TRANSIENT, TaskKit, takes
from app.persistence.db import Database


def register(kit: TaskKit, extensions: Iterable[Extension], databases: Mapping[str, Database]) -> None:
    for ext in extensions:
        kit.define(ext.task, _receiver(kit, ext, databases[ext.name]), ignore_result=True)


def _receiver(kit: TaskKit, ext: Extension, db: Database) -> Callable[..., Any]:
    def run(task: Task, body: Any) -> bool:
        env = kit.parse(task, Envelope, body)
        try:
            return ext.receive(db, env)
        except NotSubscribed as exc:  # sent by hand, or a replay to the wrong consumer
            kit.dead_letter(task, body, str(exc), exc)
        except TRANSIENT as exc:
            kit.retry_or_dead_letter(task, body, exc, persistent=True, give_up=lambda _reason: None)

    return takes(Envelope, run)
