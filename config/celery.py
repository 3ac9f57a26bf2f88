"""Celery's own configuration keys, derived from :class:`config.settings.Settings`.

Every process — API, each service worker, tools — builds its Celery app from this one
function, so every process declares the same queues with the same arguments.
"""

from __future__ import annotations

import math
import ssl
from typing import Any

from kombu import Exchange, Queue

from config.settings import SERVICES, Settings

#: One topic exchange carries every task message; each service queue binds ``<service>.#``.
EXCHANGE = Exchange("checkout", type="topic", durable=True)

#: RabbitMQ: a message rejected from ``<service>`` is routed by the broker to ``<service>.dlq``.
DEAD_LETTER_EXCHANGE = Exchange("checkout.dlx", type="direct", durable=True)


def dead_letter_queue_name(service: str) -> str:
    return f"{service}.dlq"


#: RabbitMQ queue types (``CHECKOUT_RABBITMQ_QUEUE_TYPE``).
CLASSIC, QUORUM = "classic", "quorum"


def quorum_arguments(delivery_limit: int | None = None) -> dict[str, Any]:
    """A quorum queue: replicated across the cluster; with a delivery limit, a message handed
    back that many times (its worker died on it, or let go of it) is dead-lettered instead of
    delivered again.

    Dead-lettering is at-least-once: the message stays in its queue until ``<queue>.dlq``
    confirms it, so none is lost if the dead-letter queue is briefly unreachable. RabbitMQ
    needs ``reject-publish`` overflow for that (it matters only under a length limit, which
    these queues do not set)."""
    arguments: dict[str, Any] = {"x-queue-type": QUORUM}
    if delivery_limit is not None:
        arguments |= {
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return arguments


def service_queues(
    broker_kind: str = "memory", queue_type: str = CLASSIC, delivery_limit: int = 5, names: tuple[str, ...] = SERVICES
) -> list[Queue]:
    """The queues of ``names``: the four services' (and each extension's, when named). On
    RabbitMQ each names its dead-letter exchange and route, and is a classic or a quorum
    queue (with ``delivery_limit``).

    Every process declares them from this one function, so they are always declared with
    the same arguments (RabbitMQ refuses a redeclaration with different ones).
    """
    queues = []
    for name in names:
        arguments: dict[str, Any] = {}
        if broker_kind == "amqp":
            arguments = {
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                "x-dead-letter-routing-key": dead_letter_queue_name(name),
            }
            if queue_type == QUORUM:
                arguments |= quorum_arguments(delivery_limit)
        queues.append(Queue(name, EXCHANGE, routing_key=f"{name}.#", durable=True, queue_arguments=arguments))
    return queues


def dead_letter_queues(queue_type: str = CLASSIC, names: tuple[str, ...] = SERVICES) -> list[Queue]:
    """RabbitMQ's ``<service>.dlq`` queues. Celery never declares these itself; the project does.
    Quorum (without a delivery limit or a dead-letter exchange of their own) when the service
    queues are."""
    arguments = quorum_arguments() if queue_type == QUORUM else {}
    return [
        Queue(
            dead_letter_queue_name(name),
            DEAD_LETTER_EXCHANGE,
            routing_key=dead_letter_queue_name(name),
            durable=True,
            queue_arguments=dict(arguments),
        )
        for name in names
    ]


def retry_countdown(settings: Settings, seconds: float) -> float:
    """The countdown to give ``Task.retry`` for a delay of ``seconds``.

    On quorum queues Celery does not hold a delayed message in the worker: it routes it
    through RabbitMQ's delayed-delivery exchanges (``celery_delayed_*``), which count whole
    seconds — a fraction is dropped, and a delay under one second is refused (the retry
    would fail). Rounded up there, a retry never comes early."""
    if settings.broker_kind == "amqp" and settings.rabbitmq_queue_type == QUORUM:
        return float(max(1, math.ceil(seconds)))
    return seconds


def task_routes(names: tuple[str, ...] = SERVICES) -> dict[str, dict[str, str]]:
    """Tasks are named ``<service>.<verb>``; the service part picks the queue."""
    return {f"{name}.*": {"queue": name, "routing_key": f"{name}.task"} for name in names}


#: The longest wait between two publish attempts while the broker is away.
PUBLISH_RETRY_INTERVAL_MAX = 2.0


def publish_retry_policy(seconds: float) -> dict[str, Any]:
    """kombu's retry policy that keeps trying to publish for about ``seconds``: at once, then
    every 0.5, 1, 1.5 s, then every PUBLISH_RETRY_INTERVAL_MAX seconds."""
    return {
        "max_retries": 3 + math.ceil(seconds / PUBLISH_RETRY_INTERVAL_MAX),
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": PUBLISH_RETRY_INTERVAL_MAX,
    }


def redis_watch(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport, watching its connections: a connection that stays open and
    carries nothing (a partition) must be noticed, or a worker waits on it forever.

    * ``health_check_interval`` — a PING before a command on a connection idle that long,
      and kombu's check of the BRPOP connection: a reply overdue by more than the BRPOP
      timeout plus this is dropped and the worker reconnects (kombu's default, 25 s, takes
      ~51 s to notice);
    * ``socket_timeout`` — a command (a publish, an ack) waiting on a silent connection
      fails instead of blocking the worker's event loop, where no check can run;
    * TCP keepalive — the kernel's own probe, for a peer that vanished altogether."""
    return {
        "health_check_interval": max(1, round(settings.broker_heartbeat_seconds / 2)),
        "socket_timeout": settings.broker_socket_timeout_seconds,
        "socket_connect_timeout": settings.broker_socket_timeout_seconds,
        "socket_keepalive": True,
    }


#: The Redis transports of every process, for ``redis://`` and ``rediss://`` URLs
#: (app/messaging/redis_transport.py).
REDIS_TRANSPORTS = {
    "redis": "app.messaging.redis_transport:Transport",
    "rediss": "app.messaging.redis_transport:SecureTransport",
}


def redis_transport(broker_url: str) -> dict[str, Any]:
    """Celery's keys that name the Redis transport of :data:`REDIS_TRANSPORTS` for ``broker_url``.

    A transport named in ``broker_transport`` takes the place of the one the URL's scheme
    names, and kombu turns TLS on by itself only for a scheme of ``rediss``: for such a URL
    without ``ssl_*`` options, TLS is turned on here the way kombu would (certificates not
    checked; add ``ssl_cert_reqs=required`` and ``ssl_ca_certs`` to the URL to check them)."""
    scheme, _, rest = broker_url.partition("://")
    conf: dict[str, Any] = {"broker_transport": REDIS_TRANSPORTS[scheme]}
    if scheme == "rediss" and "ssl_" not in rest.partition("?")[2]:
        conf["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_NONE}
    return conf


def redis_backend_watch(settings: Settings) -> dict[str, Any]:
    """The same watch on the Redis result backend's connections (Celery's default socket
    timeout there is 120 s: a chord's count would wait that long on a silent connection)."""
    return {
        "redis_socket_timeout": settings.broker_socket_timeout_seconds,
        "redis_socket_connect_timeout": settings.broker_socket_timeout_seconds,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": max(1, round(settings.broker_heartbeat_seconds / 2)),
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.effective_result_backend,
        # JSON only, in both directions.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: a message is acknowledged after its task ran; a worker that dies
        # mid-task gives the message back. Every handler is idempotent, so a repeat is harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": service_queues(
            settings.broker_kind, settings.rabbitmq_queue_type, settings.rabbitmq_delivery_limit, settings.queues
        ),
        # records malformed messages as dead letters instead of dropping them
        "worker_consumer": "app.messaging.consumer:CheckoutConsumer",
        "task_routes": task_routes(settings.queues),
        "task_default_queue": "order",
        "task_default_exchange": EXCHANGE.name,
        "task_default_exchange_type": EXCHANGE.type,
        "task_default_routing_key": "order.task",
        "task_create_missing_queues": False,
        # A failed chord header is reported once, through the body's error callback, after
        # every header task has finished; see app/messaging/canvas.py.
        "task_allow_error_cb_on_chord_header": False,
        "result_expires": 3600,
        "result_extended": False,
        "broker_connection_retry_on_startup": True,
        # A connection that stays open and carries nothing is noticed (AMQP; Redis: redis_watch).
        "broker_heartbeat": settings.broker_heartbeat_seconds,
        # A task's follow-up messages (a chain's next step, an error callback) are published
        # after the task ran: Celery gives up after its retry policy and then reports the step
        # failed. Keep trying long enough to ride out a broker restart.
        "task_publish_retry_policy": publish_retry_policy(settings.publish_retry_seconds),
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        # `celery -A workers.order beat` runs the saga sweeper (app/operations/sweeper.py),
        # from a schedule kept in memory: its one entry needs no file in the working directory
        "beat_schedule": {"sweep-overdue-sagas": {"task": "order.sweep", "schedule": settings.sweep_interval_seconds}},
        "beat_scheduler": "celery.beat:Scheduler",
        "timezone": "UTC",
    }
    if settings.signing == "on":
        # Signed (Celery's auth serializer over JSON) in every direction, and nothing else
        # accepted; app/messaging/signing.py loads the key and certificates.
        conf.update(
            task_serializer="auth",
            result_serializer="auth",
            event_serializer="auth",
            accept_content=["auth"],
            result_accept_content=["auth"],
            security_digest="sha256",
        )
    transport: dict[str, Any] = {}
    if settings.broker_kind == "memory":
        # kombu's virtual transports poll; the default 1 s would add a second per hop.
        transport["polling_interval"] = 0.005
    elif settings.broker_kind == "redis":
        # kombu's Redis transport, reading what it takes off a queue's list: a payload that is
        # not a kombu message envelope becomes a dead letter instead of breaking the consumer
        conf |= redis_transport(settings.broker_url)
        transport["visibility_timeout"] = settings.visibility_timeout_seconds
        transport |= redis_watch(settings)
        if settings.namespace:
            transport["global_keyprefix"] = f"{settings.namespace}:"
    else:
        # Publisher confirms: a publish returns once the broker has the message (a quorum queue:
        # once a majority of its replicas do); one the broker refuses raises instead of vanishing.
        # With quorum queues Celery itself turns global QoS off (worker_detect_quorum_queues)
        # and sends retry countdowns through RabbitMQ's delayed delivery (see retry_countdown).
        transport["confirm_publish"] = True
        # Passed to py-amqp's connection: a read or write that blocks this long (a publish
        # confirm on a silent connection) raises, and kombu publishes again on a new one.
        transport["read_timeout"] = transport["write_timeout"] = settings.broker_socket_timeout_seconds
    conf["broker_transport_options"] = transport
    backend = settings.effective_result_backend
    if backend.startswith("redis"):
        conf |= redis_backend_watch(settings)
    if backend.startswith("redis") and settings.namespace:
        conf["result_backend_transport_options"] = {"global_keyprefix": f"{settings.namespace}:"}
    if backend.startswith("db+"):
        # The database backend completes chords by polling; poll briskly — each poll is a
        # countdown, which quorum queues count in whole seconds (see retry_countdown).
        conf["result_chord_retry_interval"] = retry_countdown(settings, 0.2)
    return conf
