"""Typed settings read from the environment, with embedded-mode defaults.

Every variable is prefixed ``CHECKOUT_``. With nothing set, the system runs embedded:
kombu's in-memory broker, an in-process result store and one SQLite file under
``CHECKOUT_DATA_DIR``. Tests pass an explicit override (``Settings(**overrides)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES: tuple[str, ...] = ("order", "inventory", "payment", "shipping")

Service = Literal["order", "inventory", "payment", "shipping"]


class Settings(BaseSettings):
    """What a process needs to know to join the system."""

    model_config = SettingsConfigDict(env_prefix="CHECKOUT_", extra="forbid", frozen=True)

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
    saga_deadline_seconds: float = Field(
        300.0,
        gt=0,
        description="A saga not finished this long after it started (or was last re-driven) is re-driven "
        "by the sweeper from its recorded state.",
    )
    saga_give_up_seconds: float = Field(
        900.0,
        gt=0,
        description="A saga still running this long after placement is compensated by the sweeper "
        "(reason deadline_exceeded) instead of being re-driven again.",
    )
    sweep_interval_seconds: float = Field(
        30.0, gt=0, le=3600, description="How often the sweeper (Celery beat, or a thread when embedded) runs."
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
    publish_retry_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long a worker keeps trying to send a saga's next message while the broker is "
        "away (a restart), before the step is reported failed. Events are not held up: the outbox "
        "keeps them until the broker is back.",
    )
    log_level: str = Field("WARNING", description="Log level of workers started in-process.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Worker log lines: json (one object a line, with correlation_id and causation_id) or text.",
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

    @model_validator(mode="after")
    def _check_urls(self) -> Settings:
        scheme = self.broker_url.split("://", 1)[0]
        if scheme not in {"memory", "redis", "rediss", "amqp", "amqps", "pyamqp"}:
            raise ValueError(f"CHECKOUT_BROKER_URL: unsupported scheme {scheme!r}; use memory://, redis:// or amqp://")
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
        own = getattr(self, f"{service}_database_url")
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
