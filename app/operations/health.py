"""Is the system able to work? The broker, each service's database, a worker per queue.

``python -m app health`` exits 0 when every check passes and 1 otherwise, so it fits a
container healthcheck (``--service payment`` checks what one payment worker needs;
``--this-host`` counts only the worker named ``payment@<this host>``, the container's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text

from app.messaging.queues import connect
from config.settings import redact_url

if TYPE_CHECKING:
    from app.operations.system import System


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check(rt: System, services: tuple[str, ...], timeout: float = 2.0, host: str | None = None) -> list[Check]:
    """The broker, each service's database, and a worker on each service's queue — only the
    one named ``<service>@<host>`` (as ``-n <service>@%h`` names it) when ``host`` is given."""
    results = [_broker(rt, timeout)]
    for service in services:
        results.append(_database(rt, service))
    if rt.settings.embedded:
        results.append(Check("workers", True, "embedded: they run inside each process that uses the API"))
    elif results[0].ok:
        results.extend(_workers(rt, services, timeout, host))
    return results


def _broker(rt: System, timeout: float) -> Check:
    url = redact_url(rt.settings.broker_url)  # as configured: kombu's own form shows ":**@" for no password
    try:
        with rt.celery.connection_for_write() as conn:
            connect(conn, timeout)
    except Exception as exc:  # any failure to connect is the answer
        return Check("broker", False, f"{url}: {exc}")
    return Check("broker", True, url)


def _database(rt: System, service: str) -> Check:
    db = rt.databases[service]
    url = db.engine.url.render_as_string(hide_password=True)
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect is the answer
        return Check(f"database {service}", False, f"{url}: {str(exc).splitlines()[0]}")
    return Check(f"database {service}", True, url)


def _workers(rt: System, services: tuple[str, ...], timeout: float, host: str | None = None) -> list[Check]:
    destination = [f"{service}@{host}" for service in services] if host else None
    replies = rt.celery.control.inspect(timeout=timeout, destination=destination).active_queues() or {}
    consumers: dict[str, list[str]] = {service: [] for service in services}
    for worker, queues in replies.items():
        for queue in queues or []:
            if queue.get("name") in consumers:
                consumers[queue["name"]].append(worker)
    results = []
    for service, found in consumers.items():
        named = f" {service}@{host}" if host else ""
        missing = f"no worker{named} answered for queue {service!r} within {timeout:g}s"
        results.append(Check(f"worker {service}", bool(found), ", ".join(sorted(found)) if found else missing))
    return results
