"""Typed settings read from the environment, with embedded-mode defaults.

Every variable is prefixed ``CHECKOUT_``. With nothing set, the system runs embedded:
kombu's in-memory broker, an in-process result store and one SQLite file under
``CHECKOUT_DATA_DIR``. Tests pass an explicit override (``Settings(**overrides)``).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.names import BUILTIN_EXTENSIONS, SERVICES

Service = Literal["order", "inventory", "payment", "shipping"]


#: An extension's name: its queue, its task prefix (``<name>.handle``) and its tables' prefix.
EXTENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
EXTENSION_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

#: Settings holding a URL that may carry a password.
URL_SETTINGS: tuple[str, ...] = (
    "broker_url",
    "result_backend",
    "database_url",
    "order_database_url",
    "inventory_database_url",
    "payment_database_url",
    "shipping_database_url",
)

#: Passwords that ship as defaults (RabbitMQ's guest, the postgres image's, this project's
#: old compose file's) or that people type when asked for one.
DEFAULT_PASSWORDS = frozenset(
    {"guest", "postgres", "checkout", "password", "changeme", "secret", "admin", "root", "redis", "rabbitmq", "celery"}
)


def _extension_entries(value: str) -> list[tuple[str, str]]:
    """``"analytics, mail=pkg.mod:ext"`` -> ``[("analytics", ""), ("mail", "pkg.mod:ext")]``."""
    entries = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, target = item.partition("=")
        entries.append((name.strip(), target.strip()))
    return entries


def _emit_entries(value: str) -> dict[str, int]:
    """``"OrderPlaced=1, X=2"`` -> ``{"OrderPlaced": 1, "X": 2}`` (ValueError for another shape)."""
    entries: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, version = (part.strip() for part in item.partition("="))
        if not sep or not name or not version.isdigit() or int(version) < 1:
            raise ValueError(f"{item!r} is not TYPE=VERSION (e.g. OrderPlaced=1)")
        if name in entries:
            raise ValueError(f"{name} named twice")
        entries[name] = int(version)
    return entries


def is_loopback(host: str | None) -> bool:
    """True for this machine only: 127.0.0.0/8, ::1, localhost — or no host (a Unix socket, a file)."""
    if not host or host.lower() in {"localhost", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_credentials(url: str) -> str | None:
    """Why ``url`` would log in to another host with well-known default credentials, or None.

    RabbitMQ (kombu logs in as guest/guest when the URL names no user) and Redis (no password
    at all is its default) must carry a real password; a SQL URL may carry none, since the
    driver then takes it from PGPASSWORD, ~/.pgpass or a client certificate."""
    for part in url.split(";"):  # kombu's failover list: amqp://a;amqp://b
        parsed = urlsplit(part.strip())
        schemes = set(parsed.scheme.lower().split("+"))
        host = parsed.hostname
        if is_loopback(host):
            continue
        user = unquote(parsed.username) if parsed.username else ""
        password = unquote(parsed.password) if parsed.password is not None else ""
        weak = password.lower() in DEFAULT_PASSWORDS or (password and password == user)
        if schemes & {"amqp", "amqps", "pyamqp"}:
            if (user or "guest") == "guest" or not password or weak:
                return f"logs in to {host} as {user or 'guest'} with a default password"
        elif schemes & {"redis", "rediss"}:
            if not password:
                return f"has no password for Redis on {host} (anyone who reaches it can read and send messages)"
            if weak:
                return f"carries a well-known default password for {host}"
        elif schemes & {"postgresql", "postgres", "mysql", "mariadb"} and password and weak:
            return f"carries a well-known default password for {host}"
    return None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for showing settings)."""
    parts = []
    for part in url.split(";"):
        parsed = urlsplit(part)
        if parsed.password is not None:
            userinfo = f"{parsed.username or ''}:***"
            netloc = f"{userinfo}@{parsed.netloc.rsplit('@', 1)[1]}"
            part = parsed._replace(netloc=netloc).geturl()
        parts.append(part)
    return ";".join(parts)


class Settings(BaseSettings):
    """What a process needs to know to join the system."""

    # hide_input_in_errors: a refused URL or key must not end up in a log through the error.
    model_config = SettingsConfigDict(env_prefix="CHECKOUT_", extra="forbid", frozen=True, hide_input_in_errors=True)

    broker_url: str = Field(
        "memory://localhost/",
        description="Celery broker: memory:// (embedded), redis://host:port/db or amqp://user:pass@host:port/vhost.",
    )
    result_backend: str | None = Field(
        None,
        description="Celery result backend (chords need one). Default: cache+memory:// when "
        "embedded, the broker's Redis when the broker is Redis, the database (db+URL) otherwise.",
    )
    data_dir: Path = Field(Path("var"), description="Where embedded mode keeps its SQLite file.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL for every service. Default: sqlite:///<data_dir>/checkout.db."
    )
    order_database_url: str | None = Field(None, description="Order service's own database (overrides database_url).")
    inventory_database_url: str | None = Field(None, description="Inventory service's own database.")
    payment_database_url: str | None = Field(None, description="Payment service's own database.")
    shipping_database_url: str | None = Field(None, description="Shipping service's own database.")
    namespace: str = Field(
        "",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="Prefix for every Redis key the system writes (broker and results), so "
        "several installations or test runs can share one Redis.",
    )
    embedded_concurrency: int = Field(2, ge=1, le=32, description="Threads per in-process service worker.")
    retry_max: int = Field(5, ge=0, le=100, description="Retries of a step on a transient failure.")
    retry_base_seconds: float = Field(0.2, gt=0, le=60, description="First retry delay; doubles each retry.")
    retry_cap_seconds: float = Field(10.0, gt=0, le=3600, description="Longest delay between two retries.")
    outbox_sweep_seconds: float = Field(
        2.0, gt=0, le=3600, description="How often each service re-publishes events left unpublished."
    )
    outbox_grace_seconds: float = Field(
        2.0, ge=0, le=3600, description="Age an unpublished event must reach before the sweep takes it."
    )
    worker_outbox_sweep: bool = Field(
        True,
        description="Each service worker sweeps its own outbox (a thread). Turn it off where the outbox relay "
        "(python -m app relay) sweeps every service instead, as docker-compose.yml and make up do.",
    )
    relay_heartbeat_file: Path | None = Field(
        None,
        description="A file the outbox relay touches after each round that worked; python -m app relay --check "
        "fails once it is three rounds old (a container healthcheck). Unset: none.",
    )
    saga_deadline_seconds: float = Field(
        300.0,
        gt=0,
        description="A saga that has recorded no progress for this long (and was not re-driven lately) is "
        "re-driven by the sweeper from its recorded state, unless it may merely be queued behind a backlog; "
        "after each re-drive the wait doubles, with jitter.",
    )
    saga_give_up_seconds: float = Field(
        900.0,
        gt=0,
        description="A lost saga still running this long after placement is compensated by the sweeper "
        "(reason deadline_exceeded) instead of being re-driven again; a saga that may merely be queued is "
        "never given up on.",
    )
    sweep_interval_seconds: float = Field(
        30.0, gt=0, le=3600, description="How often the sweeper (Celery beat, or a thread when embedded) runs."
    )
    sweep_max_redrives: int = Field(
        50,
        ge=1,
        le=10000,
        description="Most sagas the sweeper re-drives (or gives up on) in one round; the rest wait for the next "
        "round, so recovery work stays bounded however many sagas are overdue.",
    )
    admission_target_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Admission control: new orders are refused (app.Busy, retry after a few seconds) while "
        "the sagas in flight would take longer than this to finish at the rate sagas finished lately "
        "(and the oldest of them is older than this). 0 turns admission control off.",
    )
    admission_min_in_flight: int = Field(
        100,
        ge=0,
        description="Admission control never refuses while fewer sagas than this are in flight (a few stuck "
        "sagas in a quiet system are the sweeper's business, not a reason to refuse orders).",
    )
    admission_max_in_flight: int = Field(
        10000,
        ge=1,
        description="Admission control refuses new orders while this many sagas are in flight, whatever the rate.",
    )
    admission_window_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Admission control: how far back the rate at which sagas finish is measured.",
    )
    admission_refresh_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="Admission control: each placing process measures the load at most this often and decides "
        "from that measurement in between (a refusal costs no database round trip).",
    )
    visibility_timeout_seconds: int = Field(
        600,
        ge=10,
        description="Redis only: a message not acknowledged this long after delivery is given to another "
        "worker. It bounds how long a killed worker's messages wait, and must exceed every retry delay "
        "and the saga deadline (checked at start-up).",
    )
    rabbitmq_consumer_timeout_seconds: int = Field(
        1800,
        ge=10,
        description="RabbitMQ only: the broker's consumer_timeout (30 min unless changed in rabbitmq.conf); "
        "a retry delay or deadline at least this long is refused at start-up.",
    )
    rabbitmq_queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="RabbitMQ only: the type of the service queues and their <queue>.dlq. quorum: replicated "
        "across a RabbitMQ cluster, and a message whose worker dies on every delivery goes to <queue>.dlq "
        "after CHECKOUT_RABBITMQ_DELIVERY_LIMIT returns instead of looping forever.",
    )
    rabbitmq_delivery_limit: int = Field(
        5,
        ge=1,
        le=1000,
        description="Quorum queues only: how many times a message may go back to its queue undone (its worker "
        "process died, or the worker stopped or lost the broker while holding it) before the broker "
        "dead-letters it to <queue>.dlq.",
    )
    saga_mode: Literal["orchestration", "choreography"] = Field(
        "orchestration",
        description="How sagas run: orchestration (a Celery canvas built from the saga definition "
        "drives the steps and compensations) or choreography (no canvas: each service reacts to the "
        "others' events and undoes its own work on a failure).",
    )
    broker_heartbeat_seconds: float = Field(
        5.0,
        ge=1,
        le=600,
        description="How soon a worker notices a broker connection that stays open but carries nothing (a "
        "partition, a dead NAT entry): AMQP heartbeats at this interval (two missed: the connection is dropped "
        "and made again); on Redis, a health check of idle connections at half of it.",
    )
    broker_socket_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="The longest a single read or write on a broker (or Redis result backend) connection may "
        "block: a publish waiting on a silent connection fails after it and is tried again on a new one, "
        "instead of hanging the process.",
    )
    publish_retry_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long a worker keeps trying to send a saga's next message while the broker is "
        "away (a restart), before the step is reported failed. Events are not held up: the outbox "
        "keeps them until the broker is back.",
    )
    extensions: str = Field(
        "",
        description="Consumers added to the system, comma-separated; each has its own queue, worker and tables, "
        "and receives the events it subscribes to. A built-in one by name (analytics: sales by day from "
        "OrderCompleted/OrderCancelled), or your own as name=package.module:attribute. Replay feeds a new one "
        "its history.",
    )
    emit_versions: str = Field(
        "",
        description="Events to write in an earlier version while some consumers still read only that one, "
        "comma-separated TYPE=VERSION (e.g. OrderPlaced=1): the producer downcasts them. Remove an entry once "
        "every consumer of the type is upgraded.",
    )
    log_level: str = Field("WARNING", description="Log level of workers started in-process.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Worker log lines: json (one object a line, with correlation_id and causation_id) or text.",
    )
    trace_file: Path | None = Field(
        None,
        description="Append every finished trace span to this file as a JSON line (many processes may share it); "
        "python -m app orders show ID --trace reads it. Tracing is on when this or OTEL_TRACES_EXPORTER is set.",
    )
    flower_user: str | None = Field(
        None,
        description="User name of Flower's HTTP basic auth (`make flower`, which does not start without it "
        "and the password).",
    )
    flower_password: SecretStr | None = Field(
        None, description="Password of Flower's HTTP basic auth; it guards Flower's /metrics too."
    )
    flower_address: str = Field(
        "127.0.0.1",
        description="Address Flower listens on: this host only by default. To serve other hosts, put TLS in "
        "front (basic auth over plain HTTP sends the password in clear).",
    )
    flower_port: int = Field(5555, ge=1, le=65535, description="Port Flower listens on.")
    api_token: SecretStr | None = Field(
        None,
        description="With it set, every HTTP API endpoint but /health requires `Authorization: Bearer <token>` "
        "(401 without it).",
    )
    operator_token: SecretStr | None = Field(
        None,
        description="With it set, the HTTP API's operator endpoints (/dead-letters, /parked) require "
        "`Authorization: Bearer <token>` (401 without it) and CHECKOUT_API_TOKEN does not open them; "
        "unset, CHECKOUT_API_TOKEN guards them too.",
    )
    api_rate_limit_per_minute: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Orders one customer may place over the HTTP API per minute, in each API process "
        "(429 with Retry-After beyond it); 0 turns the limit off.",
    )
    api_max_body_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest HTTP API request body, in bytes (413 beyond it)."
    )
    max_message_bytes: int = Field(
        65536,
        ge=4096,
        le=16 * 1024 * 1024,
        description="Largest message body a worker accepts, in bytes; a larger one is dead-lettered unread "
        "(its first 4 KiB kept) and the worker goes on.",
    )
    signing: Literal["off", "on"] = Field(
        "off",
        description="on: every process signs what it sends (Celery's auth serializer) and workers accept only "
        "messages signed by a certificate in CHECKOUT_SIGNING_CERT_STORE; others are dead-lettered.",
    )
    signing_key: SecretStr | None = Field(
        None, description="This process's private RSA key (with CHECKOUT_SIGNING=on): the PEM text, or a file path."
    )
    signing_key_password: SecretStr | None = Field(None, description="Password of an encrypted CHECKOUT_SIGNING_KEY.")
    signing_cert: str | None = Field(
        None, description="The X.509 certificate of CHECKOUT_SIGNING_KEY: the PEM text, or a file path."
    )
    signing_cert_store: str | None = Field(
        None, description="Directory of the certificates whose signatures are trusted (every process's)."
    )
    allow_default_credentials: bool = Field(
        False,
        description="Development only: let a broker or database URL to another host carry a well-known default "
        "password (guest, postgres, checkout ...) or none (Redis, RabbitMQ). Loopback hosts never need it.",
    )

    @field_validator("flower_user", "flower_password")
    @classmethod
    def _fit_for_basic_auth(cls, value: str | SecretStr | None, info: ValidationInfo) -> str | SecretStr | None:
        """Flower compares credentials as ASCII strings, and a colon ends the user name."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text and not (text.isascii() and text.isprintable()):
            raise ValueError("printable ASCII characters only (Flower's basic auth compares ASCII strings)")
        if text and info.field_name == "flower_user" and ":" in text:
            raise ValueError("no ':' in the user name (basic auth sends user:password)")
        return value

    @field_validator("extensions")
    @classmethod
    def _known_extensions(cls, value: str) -> str:
        seen: set[str] = set()
        for name, target in _extension_entries(value):
            if not EXTENSION_NAME.match(name):
                raise ValueError(f"{name!r} is not an extension name: lower-case letters, digits and _, at most 31")
            if name in SERVICES:
                raise ValueError(f"{name!r} is a service of the saga, not an extension")
            if name in seen:
                raise ValueError(f"{name!r} is named twice")
            seen.add(name)
            if target and not EXTENSION_TARGET.match(target):
                raise ValueError(f"{name}={target}: give the extension as name=package.module:attribute")
            if not target and name not in BUILTIN_EXTENSIONS:
                raise ValueError(
                    f"no built-in extension {name!r} (built in: {', '.join(BUILTIN_EXTENSIONS)}); "
                    f"for your own, name=package.module:attribute"
                )
        return value

    @field_validator("emit_versions")
    @classmethod
    def _type_equals_version(cls, value: str) -> str:
        _emit_entries(value)
        return value

    @property
    def emit_version_map(self) -> dict[str, int]:
        """Each event type to write in an earlier version, and that version."""
        return _emit_entries(self.emit_versions)

    @property
    def extension_targets(self) -> dict[str, str]:
        """Each extension's name and the ``module:attribute`` of its definition."""
        return {name: target or BUILTIN_EXTENSIONS[name] for name, target in _extension_entries(self.extensions)}

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue of the system: the four services', then each extension's."""
        return SERVICES + tuple(self.extension_targets)

    @model_validator(mode="after")
    def _check_urls(self) -> Settings:
        scheme = self.broker_url.split("://", 1)[0]
        if scheme not in {"memory", "redis", "rediss", "amqp", "amqps", "pyamqp"}:
            raise ValueError(f"CHECKOUT_BROKER_URL: unsupported scheme {scheme!r}; use memory://, redis:// or amqp://")
        return self

    @model_validator(mode="after")
    def _quorum_queues_on_rabbitmq(self) -> Settings:
        """Quorum queues and their delivery limit exist on RabbitMQ only; a setting that would
        silently do nothing (no poison-loop limit where one was asked for) is refused."""
        if self.rabbitmq_queue_type == "quorum" and self.broker_kind != "amqp":
            raise ValueError(
                "CHECKOUT_RABBITMQ_QUEUE_TYPE=quorum needs a RabbitMQ broker (amqp://), not "
                f"{self.broker_url.split('://', 1)[0]}://: unset it, or point CHECKOUT_BROKER_URL at RabbitMQ"
            )
        if "rabbitmq_delivery_limit" in self.model_fields_set and self.rabbitmq_queue_type != "quorum":
            raise ValueError(
                "CHECKOUT_RABBITMQ_DELIVERY_LIMIT applies to quorum queues only (classic queues have no delivery "
                "limit): set CHECKOUT_RABBITMQ_QUEUE_TYPE=quorum, or unset CHECKOUT_RABBITMQ_DELIVERY_LIMIT"
            )
        return self

    @model_validator(mode="after")
    def _give_up_after_the_deadline(self) -> Settings:
        if self.saga_give_up_seconds <= self.saga_deadline_seconds:
            raise ValueError(
                f"CHECKOUT_SAGA_GIVE_UP_SECONDS={self.saga_give_up_seconds:g} must exceed "
                f"CHECKOUT_SAGA_DEADLINE_SECONDS={self.saga_deadline_seconds:g}: a saga is re-driven at its "
                "deadline and compensated only after that"
            )
        return self

    @model_validator(mode="after")
    def _refuse_dangerous_timing(self) -> Settings:
        """A retry delay (an ETA message, held unacknowledged by the worker) or a saga deadline
        that outlives the broker's patience makes messages run twice (Redis gives them to
        another worker) or kills the channel (RabbitMQ's consumer_timeout)."""
        if self.broker_kind == "redis":
            limit, name = self.visibility_timeout_seconds, "CHECKOUT_VISIBILITY_TIMEOUT_SECONDS"
        elif self.broker_kind == "amqp":
            limit, name = self.rabbitmq_consumer_timeout_seconds, "CHECKOUT_RABBITMQ_CONSUMER_TIMEOUT_SECONDS"
        else:
            return self
        for value, variable in (
            (self.retry_cap_seconds, "CHECKOUT_RETRY_CAP_SECONDS"),
            (self.saga_deadline_seconds, "CHECKOUT_SAGA_DEADLINE_SECONDS"),
            (self.publish_retry_seconds, "CHECKOUT_PUBLISH_RETRY_SECONDS"),
        ):
            if value >= limit:
                raise ValueError(
                    f"{variable}={value:g} is not below {name}={limit}: lower {variable} or raise {name} "
                    "(a message held that long is redelivered while it is still pending)"
                )
        return self

    @model_validator(mode="after")
    def _signing_needs_its_keys(self) -> Settings:
        if self.signing == "on":
            names = ("signing_key", "signing_cert", "signing_cert_store")
            missing = [f"CHECKOUT_{name.upper()}" for name in names if not getattr(self, name)]
            if missing:
                raise ValueError(f"CHECKOUT_SIGNING=on needs {', '.join(missing)} (see README.md, Security)")
        return self

    @model_validator(mode="after")
    def _refuse_default_credentials(self) -> Settings:
        """Outside embedded mode, no URL to another host may log in with default credentials.
        Loopback is exempt: only this machine reaches it (RabbitMQ itself lets guest in from
        localhost only), and it is how a development machine or CI runs its servers."""
        if self.embedded or self.allow_default_credentials:
            return self
        for name in URL_SETTINGS:
            url = getattr(self, name)
            why = default_credentials(url) if url else None
            if why:
                variable = f"CHECKOUT_{name.upper()}"
                raise ValueError(
                    f"{variable} {why}: give the server a real password and put it in {variable} (from the "
                    "environment, not a file in the repository); on a development machine only, "
                    "CHECKOUT_ALLOW_DEFAULT_CREDENTIALS=true"
                )
        return self

    def shown(self, name: str) -> str:
        """A setting's value as ``python -m app settings`` shows it: without passwords or keys."""
        value = getattr(self, name)
        if value is None:
            return ""
        if isinstance(value, SecretStr):
            return "**********"
        if name in URL_SETTINGS:
            return redact_url(str(value))
        if str(value).lstrip().startswith("-----BEGIN "):
            return "(PEM text)"
        return str(value)

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("memory://")

    @property
    def broker_kind(self) -> Literal["memory", "redis", "amqp"]:
        scheme = self.broker_url.split("://", 1)[0]
        if scheme == "memory":
            return "memory"
        if scheme.startswith("redis"):
            return "redis"
        return "amqp"

    def database_url_for(self, service: str) -> str:
        own = getattr(self, f"{service}_database_url", None)  # an extension: the shared database
        if own:
            return str(own)
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'checkout.db'}"

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_kind == "memory":
            return "cache+memory://"
        if self.broker_kind == "redis":
            return self.broker_url
        return "db+" + self.database_url_for("order")


def load_settings() -> Settings:
    """Settings from the environment, or exit naming each bad variable and what to change."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = ["configuration error:"]
        for error in exc.errors(include_url=False):
            where = "CHECKOUT_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else "settings"
            lines.append(f"  {where}: {str(error['msg']).removeprefix('Value error, ')}")
        raise SystemExit("\n".join(lines)) from None


def variables() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting — the README's table."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(field.default)
        rows.append((f"CHECKOUT_{name.upper()}", default, field.description or ""))
    return rows
