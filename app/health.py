"""Is the system able to work? The broker, each service's database, a worker per queue.

``python -m app health`` exits 0 when every check passes and 1 otherwise, so it fits a
container healthcheck (``--service payment`` checks what one payment worker needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from app.runtime import Runtime


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check(rt: Runtime, services: tuple[str, ...], timeout: float = 2.0) -> list[Check]:
    results = [_broker(rt, timeout)]
    for service in services:
        results.append(_database(rt, service))
    if rt.settings.embedded:
        results.append(Check("workers", True, "embedded: they run inside each process that uses the API"))
    elif results[0].ok:
        results.extend(_workers(rt, services, timeout))
    return results


def _broker(rt: Runtime, timeout: float) -> Check:
    url = rt.celery.connection_for_write().as_uri()
    try:
        with rt.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # any failure to connect is the answer
        return Check("broker", False, f"{url}: {exc}")
    return Check("broker", True, url)


def _database(rt: Runtime, service: str) -> Check:
    db = rt.databases[service]
    url = db.engine.url.render_as_string(hide_password=True)
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect is the answer
        return Check(f"database {service}", False, f"{url}: {str(exc).splitlines()[0]}")
    return Check(f"database {service}", True, url)


def _workers(rt: Runtime, services: tuple[str, ...], timeout: float) -> list[Check]:
    replies = rt.celery.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {service: [] for service in services}
    for worker, queues in replies.items():
        for queue in queues or []:
            if queue.get("name") in consumers:
                consumers[queue["name"]].append(worker)
    return [
        Check(
            f"worker {service}",
            bool(nodes),
            ", ".join(sorted(nodes)) if nodes else f"no worker answered for queue {service!r} within {timeout:g}s",
        )
        for service, nodes in consumers.items()
    ]
