"""The composition root: engines, adapters, services and Celery apps, built per process.

Nothing connects at import time. A worker entry point (``workers/<service>.py``) calls
:func:`worker_app`; the Python API builds a :class:`Runtime` on first use.

Everything gets its collaborators from here, as arguments: the tasks a
:class:`app.messaging.tasks.Collaborators`, the worker's consumer its class's context, the
order's coordinator a dispatcher on the Celery app it sends through, the sweeper the
runtime itself (as the narrow :class:`app.operations.sweeper.Swept`). Nothing looks the
runtime up, and nothing this module imports imports it.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from amqp.exceptions import PreconditionFailed
from celery import Celery, signals
from sqlalchemy import Engine, MetaData

from app.adapters.fake_carrier import FakeCarrier
from app.adapters.fake_gateway import FakePaymentGateway
from app.domain.admission import Admission, Limits
from app.domain.catalog import CATALOG
from app.domain.events import emit_versions
from app.domain.saga import DEFINITIONS, Saga, SagaDefinitions
from app.domain.subscriptions import CHOREOGRAPHY, subscriptions
from app.extensions import Extension, load, load_all, with_extensions
from app.messaging import signing, telemetry, tracing
from app.messaging.canvas import CanvasDispatcher, check_canvas_settings, unlock_retries
from app.messaging.consumer import ConsumerContext, bind_consumer
from app.messaging.publisher import CeleryPublisher
from app.messaging.tasks import Collaborators, register_tasks
from app.operations.dlq import DeadLetterOps
from app.operations.logs import quiet_expected_failures
from app.operations.sweeper import SweepReport, redrive_overdue
from app.persistence.db import Database, make_engine
from app.persistence.deadletters import DeadLetterStore
from app.persistence.outbox import Relay, outbox_sweeper
from app.services import inventory, order, payment, shipping
from app.services.inventory import InventoryService
from app.services.order import Coordinator, OrderService
from app.services.payment import PaymentService
from app.services.shipping import ShippingService
from config.celery import celery_config, dead_letter_queues
from config.settings import BUILTIN_EXTENSIONS, SERVICES, Settings, load_settings

log = logging.getLogger("checkout")

SERVICE_MODULES: dict[str, ModuleType] = {
    "order": order,
    "inventory": inventory,
    "payment": payment,
    "shipping": shipping,
}


def service_metadata(service: str) -> MetaData:
    """The tables a service's code expects, or a built-in extension's (it has a line of
    revisions of its own): what its migrations compare and change."""
    if service in BUILTIN_EXTENSIONS:
        return load(service, BUILTIN_EXTENSIONS[service]).metadata
    metadata: MetaData = SERVICE_MODULES[service].metadata
    return metadata


class Runtime:
    """Everything one process needs, wired once."""

    def __init__(self, settings: Settings | None = None, definitions: SagaDefinitions = DEFINITIONS) -> None:
        self.settings = settings if settings is not None else Settings()
        self.engines: dict[str, Engine] = {}  # one per database URL, shared by whoever uses it
        self.databases: dict[str, Database] = {}
        written_as = emit_versions(self.settings.emit_version_map)
        for service in SERVICES:
            module = SERVICE_MODULES[service]
            self.databases[service] = Database(
                service, self._engine(service), module.metadata, module.tables, emit_versions=written_as
            )
        #: consumers added by CHECKOUT_EXTENSIONS, each with a database of its own tables
        self.extensions: dict[str, Extension] = load_all(self.settings.extension_targets)
        for name, ext in self.extensions.items():
            self.databases[name] = Database(name, self._engine(name), ext.metadata, ext.tables, migrated=ext.migrated)
        #: the saga definitions by version; new orders start under the current one
        self.definitions = definitions
        self.saga = definitions.current
        self.dead_letters = DeadLetterStore(self.databases)
        self.gateway = FakePaymentGateway(self.databases["payment"].engine)
        self.carrier = FakeCarrier(self.databases["shipping"].engine)
        self.choreography = self.settings.saga_mode == CHOREOGRAPHY
        self.order = OrderService(
            self.databases["order"],
            deadline_seconds=self.settings.saga_deadline_seconds,
            definitions=self.definitions,
            choreography=self.choreography,
        )
        self.inventory = InventoryService(self.databases["inventory"])
        self.payment = PaymentService(self.databases["payment"], self.gateway)
        self.shipping = ShippingService(self.databases["shipping"], self.carrier)
        self.admission = Admission(
            lambda: self.order.load(self.settings.admission_window_seconds),
            Limits(
                target_seconds=self.settings.admission_target_seconds,
                min_in_flight=self.settings.admission_min_in_flight,
                max_in_flight=self.settings.admission_max_in_flight,
                refresh_seconds=self.settings.admission_refresh_seconds,
            ),
            self.order.count_refusals,
        )
        self.subscriptions = with_extensions(subscriptions(self.settings.saga_mode), self.extensions.values())
        self.celery = self._configured_celery("checkout")
        self.relay = Relay(self.databases, CeleryPublisher(self.celery), self.consumers_of)
        register_tasks(self.celery, self.collaborators(self.celery))
        for db in self.databases.values():
            db.after_commit(self.relay.publish)

    def _engine(self, owner: str) -> Engine:
        url = self.settings.database_url_for(owner)
        if url not in self.engines:
            self.engines[url] = make_engine(url)
        return self.engines[url]

    def consumers_of(self, event_type: str) -> tuple[str, ...]:
        """The tasks an event is delivered to, in this system's saga mode (extensions' too)."""
        return self.subscriptions.get(event_type, ())

    def make_celery(self, name: str = "checkout") -> Celery:
        """A Celery app configured for this system, with every task registered."""
        app = self._configured_celery(name)
        register_tasks(app, self.collaborators(app))
        return app

    def coordinator_for(self, app: Celery) -> Coordinator:
        """The order's orchestrator, sending its canvases through ``app``."""
        retries = unlock_retries(self.settings.saga_give_up_seconds, app.conf.result_chord_retry_interval)
        return Coordinator(self.order, CanvasDispatcher(app, retries))

    def collaborators(self, app: Celery) -> Collaborators:
        """What the tasks of ``app`` call: this system's services, stores and relay."""
        return Collaborators(
            settings=self.settings,
            saga=self.saga,
            order=self.order,
            inventory=self.inventory,
            payment=self.payment,
            shipping=self.shipping,
            coordinator=self.coordinator_for(app),
            dead_letters=self.dead_letters,
            databases=self.databases,
            extensions=self.extensions,
            publish=self.relay.publish,
            sweep=lambda: self.sweep(app),
        )

    def sweep(self, app: Celery) -> SweepReport:
        """One round of the saga sweeper through ``app``; then what RabbitMQ dead-lettered on
        its own (a quorum queue's delivery limit) goes into the dead-letter store."""
        report = redrive_overdue(self, app)
        report.letters_taken_in = DeadLetterOps(self).take_in()
        if report.letters_taken_in:
            log.warning("sweeper: %s", report)
        return report

    def _configured_celery(self, name: str) -> Celery:
        app = Celery(name, set_as_current=False)
        app.conf.update(celery_config(self.settings))
        signing.install(app, self.settings)
        # the worker's consumer keeps malformed messages as dead letters (app/messaging/consumer.py)
        app.conf.worker_consumer = bind_consumer(
            ConsumerContext(
                dead_letters=self.dead_letters,
                services=tuple(self.databases),
                max_message_bytes=self.settings.max_message_bytes,
                signing=self.settings.signing == "on",
            )
        )
        telemetry.install(self.settings.log_format)
        check_canvas_settings(app.conf)
        return app

    def trace(self, service_name: str) -> bool:
        """Trace this process as ``service_name`` if the OTEL_* variables or
        CHECKOUT_TRACE_FILE ask for it (app/messaging/tracing.py); whether it does."""
        return tracing.install(service_name, self.settings.trace_file, step_of_task(self.saga))

    def prepare(self, services: tuple[str, ...] | None = None) -> None:
        """Create the services' (and extensions') tables if missing and seed the catalog and
        stock (all of them by default)."""
        services = self.settings.queues if services is None else services
        for service in services:
            self.databases[service].create_schema()
        if "order" in services:
            self.order.seed()
        if "inventory" in services:
            self.inventory.seed({p.sku: p.initial_stock for p in CATALOG})
        if "payment" in services:
            self.gateway.create_schema()
        if "shipping" in services:
            self.carrier.create_schema()

    def declare_queues(self) -> None:
        """Declare the exchanges and every service queue — and, on RabbitMQ, the dead-letter
        exchange and the ``<service>.dlq`` queues, which Celery never declares itself (without
        them the broker silently drops dead letters)."""
        queues = list(self.celery.amqp.queues.values())
        if self.settings.broker_kind == "amqp":
            queues += dead_letter_queues(self.settings.rabbitmq_queue_type, self.settings.queues)
        with self.celery.connection_for_write() as conn:
            for queue in queues:
                try:
                    queue(conn.default_channel).declare()
                except PreconditionFailed as exc:
                    # RabbitMQ never changes a queue's arguments in place (its type, its delivery limit)
                    raise RuntimeError(
                        f"queue {queue.name} exists on the broker with other arguments ({exc.reply_text}): set "
                        "CHECKOUT_RABBITMQ_QUEUE_TYPE and CHECKOUT_RABBITMQ_DELIVERY_LIMIT as it was declared, or "
                        "drain and delete it first (README: RabbitMQ quorum queues)"
                    ) from exc

    def after_fork(self) -> None:
        """In a forked worker child: drop connections inherited from the parent."""
        for engine in self.engines.values():
            engine.dispose(close=False)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def step_of_task(saga: Saga) -> dict[str, str]:
    """Task name -> the saga step (or compensation) it runs, for the traces' span attributes."""
    steps: dict[str, str] = {}
    for step in (*saga.steps, *saga.epilogue):
        steps[step.task] = step.name
        if step.reaction is not None:
            steps[step.reaction] = step.name
        if step.compensation is not None:
            steps[step.compensation.task] = step.compensation.name
    return steps


def _prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', '')}"
    return "prefork" in name


def worker_app(service: str, settings: Settings | None = None) -> Celery:
    """The Celery app of one service's worker process (``celery -A workers.<service> worker``).

    It consumes its own queue by default, prepares its tables when the worker starts,
    sweeps its outbox periodically (unless CHECKOUT_WORKER_OUTBOX_SWEEP=false: the relay process
    does), and reopens database connections in each pool child.
    """
    settings = settings if settings is not None else load_settings()
    if service not in settings.queues:
        extension = " (an extension: add it to CHECKOUT_EXTENSIONS)" if service not in SERVICES else ""
        raise ValueError(f"unknown service {service!r}{extension}; choose one of {', '.join(settings.queues)}")
    rt = Runtime(settings)
    app = rt.celery
    app.amqp.queues.select([service])
    quiet_expected_failures()
    sweeper: dict[str, Any] = {}

    @signals.worker_init.connect(weak=False)
    def _prepare(sender: Any = None, **_: Any) -> None:
        if not _prefork(sender):  # one process runs the tasks: trace it (prefork: each child)
            rt.trace(f"checkout-{service}")
        # Messages are acknowledged late, which is only safe with the idempotency store (the
        # service's steps and inbox tables): without it, or without its queues, no start.
        # (Celery logs and ignores an Exception from a signal handler; SystemExit stops it.)
        try:
            rt.prepare((service,))
            rt.declare_queues()
        except Exception as exc:
            raise SystemExit(
                f"{service} worker not started: its database or broker is not ready ({exc}). "
                "Check CHECKOUT_DATABASE_URL / CHECKOUT_BROKER_URL and that the server is up."
            ) from exc

    @signals.worker_process_init.connect(weak=False)
    def _child(**_: Any) -> None:
        rt.after_fork()
        rt.trace(f"checkout-{service}")

    @signals.beat_init.connect(weak=False)
    def _beat(**_: Any) -> None:
        rt.trace("checkout-beat")

    @signals.worker_ready.connect(weak=False)
    def _start_sweeper(**_: Any) -> None:
        settings = rt.settings
        if not settings.worker_outbox_sweep or service not in SERVICES:  # the relay sweeps; an extension emits none
            return
        sweeper["thread"] = outbox_sweeper(
            rt.relay, (service,), settings.outbox_sweep_seconds, settings.outbox_grace_seconds
        )
        sweeper["thread"].start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop_sweeper(**_: Any) -> None:
        if "thread" in sweeper:
            sweeper["thread"].stop()

    return app
