"""What the operations read of a running system: the :class:`System` protocol.

The composition root builds the system (:class:`app.bootstrap.Runtime` is one) and hands
it to the auditor, the metrics, the relay process, the dead-letter operations and the
health checks; they name the parts they use here, so nothing in this package imports the
composition root.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from app.adapters.fake_gateway import FakePaymentGateway
from app.domain.admission import Admission
from app.domain.saga import Saga
from app.messaging import Celery
from app.persistence.db import Database
from app.persistence.deadletters import DeadLetterStore
from app.persistence.outbox import Relay
from app.services.inventory import InventoryService
from app.services.order import Coordinator, OrderService
from config.settings import Settings


class System(Protocol):
    """A wired system, as the operations see it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def databases(self) -> Mapping[str, Database]: ...

    @property
    def dead_letters(self) -> DeadLetterStore: ...

    @property
    def order(self) -> OrderService: ...

    @property
    def inventory(self) -> InventoryService: ...

    @property
    def gateway(self) -> FakePaymentGateway: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def saga(self) -> Saga: ...

    @property
    def relay(self) -> Relay: ...

    @property
    def celery(self) -> Celery: ...

    def coordinator_for(self, app: Celery) -> Coordinator: ...

    def prepare(self, services: tuple[str, ...] | None = None) -> None: ...

    def declare_queues(self) -> None: ...

    def close(self) -> None: ...
