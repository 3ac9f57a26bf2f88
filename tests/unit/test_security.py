"""Security at the edges, without a broker: JSON-only accept lists, message signing,
credentials from the environment only, and the message size limit.

The consumer is the worker's real one (``app.messaging.consumer.CheckoutConsumer``), fed kombu
messages by :class:`tests.support.consumer.ConsumerProbe`; the same checks against real
worker processes on Redis and RabbitMQ are in ``tests/brokers/test_security.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import ImproperlyConfigured
from celery.security.certificate import Certificate
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer
from pydantic import SecretStr, ValidationError

from app.bootstrap import Runtime
from app.messaging.consumer import FORGED, OVERSIZE_KEPT_BYTES
from app.messaging.monitor import monitor_app
from app.operations.dlq import DeadLetterOps
from app.persistence.deadletters import DEAD
from config.celery import celery_config
from config.settings import Settings, load_settings, redact_url
from tests.conftest import purge_memory_broker
from tests.support.consumer import ConsumerProbe
from tests.support.signing import Signer, cert_store, make_signer, signing_overrides
from tests.unit.test_settings import start_worker

BROKER_URLS = {
    "memory": "memory://localhost/",
    "redis": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672//",
}

#: Serializers that can run code or build arbitrary objects when decoding; none may be accepted.
UNSAFE = ("pickle", "yaml", "msgpack", "x-python-serialize")

CONTENT_KEYS = ("accept_content", "result_accept_content")
SERIALIZER_KEYS = ("task_serializer", "result_serializer", "event_serializer")


def wire_settings(conf: Any) -> dict[str, Any]:
    return {key: conf[key] if isinstance(conf, dict) else getattr(conf, key) for key in CONTENT_KEYS + SERIALIZER_KEYS}


def assert_no_unsafe(wire: dict[str, Any]) -> None:
    text = json.dumps(wire).lower()
    found = [name for name in UNSAFE if name in text]
    assert not found, f"{found} on the wire: {wire}"


# --- JSON only -----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKER_URLS))
def test_json_only_in_every_accept_list_for_every_broker(kind: str, tmp_path: Path) -> None:
    settings = Settings(broker_url=BROKER_URLS[kind], data_dir=tmp_path)
    rt = Runtime(settings)
    try:
        apps = {
            "celery_config": celery_config(settings),
            "the workers' and API's app": rt.celery.conf,
            "Flower's app": monitor_app(settings).conf,
        }
        for where, conf in apps.items():
            wire = wire_settings(conf)
            assert_no_unsafe(wire)
            assert wire == {
                "accept_content": ["json"],
                "result_accept_content": ["json"],
                "task_serializer": "json",
                "result_serializer": "json",
                "event_serializer": "json",
            }, where
    finally:
        rt.close()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path / "keys", "system")


@pytest.fixture
def signed_settings(tmp_path: Path, signer: Signer) -> Settings:
    store = cert_store(tmp_path / "trusted", signer)
    return Settings(data_dir=tmp_path, retry_base_seconds=0.05, **signing_overrides(signer, store))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKER_URLS))
def test_with_signing_on_only_signed_json_is_accepted(kind: str, signed_settings: Settings) -> None:
    settings = signed_settings.model_copy(update={"broker_url": BROKER_URLS[kind]})
    rt = Runtime(settings)
    try:
        for conf in (celery_config(settings), rt.celery.conf, monitor_app(settings).conf):
            wire = wire_settings(conf)
            assert_no_unsafe(wire)
            assert wire == {
                "accept_content": ["auth"],
                "result_accept_content": ["auth"],
                "task_serializer": "auth",
                "result_serializer": "auth",
                "event_serializer": "auth",
            }, wire
        # the signature covers a JSON body: what is signed is JSON, nothing else
        from kombu.serialization import registry

        serializer = registry._encoders["auth"].encoder.__self__
        assert isinstance(serializer, SecureSerializer) and serializer._serializer == "json"
    finally:
        rt.close()


# --- signing: configuration ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_signing_needs_its_key_certificate_and_store() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(signing="on")
    message = str(caught.value)
    for variable in ("CHECKOUT_SIGNING_KEY", "CHECKOUT_SIGNING_CERT", "CHECKOUT_SIGNING_CERT_STORE"):
        assert variable in message


@pytest.mark.timeout(60)
def test_a_key_that_is_not_the_certificates_is_refused_at_start(tmp_path: Path, signer: Signer) -> None:
    other = make_signer(tmp_path / "other", "other")
    store = cert_store(tmp_path / "trusted", signer, other)
    settings = Settings(data_dir=tmp_path, **signing_overrides(signer, store) | {"signing_key": str(other.key)})
    with pytest.raises(ImproperlyConfigured, match="CHECKOUT_SIGNING_KEY is the key of CHECKOUT_SIGNING_CERT"):
        Runtime(settings)


@pytest.mark.timeout(60)
def test_a_certificate_the_store_does_not_trust_is_refused_at_start(tmp_path: Path, signer: Signer) -> None:
    other = make_signer(tmp_path / "other", "other")
    store = cert_store(tmp_path / "trusted", other)
    with pytest.raises(ImproperlyConfigured, match="CHECKOUT_SIGNING_CERT_STORE"):
        Runtime(Settings(data_dir=tmp_path, **signing_overrides(signer, store)))


@pytest.mark.timeout(60)
def test_a_missing_key_file_is_named(tmp_path: Path, signer: Signer) -> None:
    store = cert_store(tmp_path / "trusted", signer)
    missing = tmp_path / "nowhere.key"
    settings = Settings(data_dir=tmp_path, **signing_overrides(signer, store) | {"signing_key": str(missing)})
    with pytest.raises(ImproperlyConfigured, match=f"CHECKOUT_SIGNING_KEY: cannot read {missing}"):
        Runtime(settings)


@pytest.mark.timeout(60)
def test_the_key_can_come_from_the_environment_as_pem_and_is_never_shown(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cert_store(tmp_path / "trusted", signer)
    for name in [k for k in os.environ if k.startswith("CHECKOUT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHECKOUT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHECKOUT_SIGNING", "on")
    monkeypatch.setenv("CHECKOUT_SIGNING_KEY", signer.key_pem())
    monkeypatch.setenv("CHECKOUT_SIGNING_CERT", signer.cert_pem())
    monkeypatch.setenv("CHECKOUT_SIGNING_CERT_STORE", str(store))
    settings = load_settings()
    assert isinstance(settings.signing_key, SecretStr)
    body = signer.key_pem().splitlines()[1]
    assert body not in repr(settings) and body not in settings.shown("signing_key")
    rt = Runtime(settings)
    rt.close()


# --- signing: what the consumer does with unsigned and forged messages ---------------


def celery_message(rt: Runtime, task: str, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A genuine Celery protocol-2 message for ``task``: (headers, unserialized body)."""
    task_id = str(uuid.uuid4())
    message = rt.celery.amqp.as_task_v2(task_id, task, args=(body,), kwargs={})
    return message.headers, message.body


def signed(signer: Signer, payload: Any) -> bytes:
    serializer = SecureSerializer(
        PrivateKey(signer.key_pem()), Certificate(signer.cert_pem()), None, "sha256", serializer="json"
    )
    data: bytes = serializer.serialize(payload)
    return data


@pytest.fixture
def signed_probe(signed_settings: Settings) -> Iterator[ConsumerProbe]:
    purge_memory_broker()
    rt = Runtime(signed_settings)
    rt.prepare()
    yield ConsumerProbe(rt)
    rt.close()
    purge_memory_broker()


@pytest.mark.timeout(60)
def test_unsigned_and_forged_messages_are_dead_lettered_and_signed_ones_go_through(
    signed_probe: ConsumerProbe, signer: Signer, tmp_path: Path
) -> None:
    rt = signed_probe.rt
    # a forger with a key of their own, whose certificate claims the trusted signer's identity
    impostor = make_signer(tmp_path / "forger", "impostor", serial=signer.serial, issuer="checkout system")
    stranger = make_signer(tmp_path / "forger", "stranger")

    cases = {
        "unsigned": lambda p: (json.dumps(p).encode(), "application/json"),
        "impostor": lambda p: (signed(impostor, p), "application/data"),
        "unknown signer": lambda p: (signed(stranger, p), "application/data"),
        "tampered": lambda p: (tamper(signed(signer, p)), "application/data"),
    }
    for label, make in cases.items():
        for task in ("payment.refund", "payment.capture"):
            headers, payload = celery_message(rt, task, {"order_id": f"o-{label}"})
            body, content_type = make(payload)
            outcome = signed_probe.deliver(body, headers, content_type=content_type)
            assert outcome.handed_on == 0, (label, task)
            assert outcome.rejected and not outcome.requeued and not outcome.acked, (label, task, outcome)
            letter = outcome.dead_letter
            assert letter is not None, (label, task)
            assert letter.reason.startswith(f"{FORGED}: "), (label, letter.reason)
            assert (letter.queue, letter.task, letter.status) == ("payment", task, DEAD)

    # the same messages, signed with the trusted key, are handed on to the pool
    for task in ("payment.refund", "payment.capture"):
        headers, payload = celery_message(rt, task, {"order_id": "o-genuine"})
        outcome = signed_probe.deliver(signed(signer, payload), headers, content_type="application/data")
        assert (outcome.handed_on, outcome.rejected, outcome.dead_letter) == (1, False, None), outcome


def tamper(data: bytes) -> bytes:
    """Change one byte of the JSON body inside a signed message (its last field)."""
    raw = base64.b64decode(data)
    return base64.b64encode(raw.replace(b"o-tampered", b"o-tampereD"))


# --- size limit ------------------------------------------------------------------------


@pytest.fixture
def probe(settings: Settings) -> Iterator[ConsumerProbe]:
    purge_memory_broker()
    rt = Runtime(settings)
    rt.prepare()
    yield ConsumerProbe(rt)
    rt.close()
    purge_memory_broker()


@pytest.mark.timeout(60)
def test_an_oversized_message_is_dead_lettered_unread_and_cannot_be_redriven(probe: ConsumerProbe) -> None:
    rt = probe.rt
    limit = rt.settings.max_message_bytes
    headers, payload = celery_message(rt, "payment.capture", {"order_id": "o-big"})
    fits = json.dumps([[{"order_id": "o-big"}], {}, payload[2]]).encode()
    assert probe.deliver(fits, headers).handed_on == 1

    big = json.dumps([[{"order_id": "o-big", "pad": "x" * limit}], {}, {}]).encode()
    headers, _ = celery_message(rt, "payment.capture", {"order_id": "o-big"})
    outcome = probe.deliver(big, headers)
    assert outcome.rejected and not outcome.requeued and outcome.handed_on == 0
    letter = outcome.dead_letter
    assert letter is not None
    assert letter.reason == f"message too large: {len(big)} bytes, over CHECKOUT_MAX_MESSAGE_BYTES={limit}"
    assert letter.message["truncated"] is True and letter.message["size"] == len(big)
    assert base64.b64decode(letter.message["body"]) == big[:OVERSIZE_KEPT_BYTES]
    assert letter.message["sha256"] == hashlib.sha256(big).hexdigest()

    with pytest.raises(ValueError, match="cannot be sent again"):
        DeadLetterOps(rt).redrive(letter.id)
    assert rt.dead_letters.get(letter.id).status == DEAD


#: Celery protocol-2 headers of the wrong type or shape, and the reason each is refused with.
HOSTILE_HEADERS: list[tuple[str, Any, str]] = [
    ("timelimit", ["soft", "hard"], "its timelimit header holds something other than a number of seconds (or null)"),
    ("timelimit", [1], "its timelimit header is not [soft, hard]"),
    ("timelimit", "60", "its timelimit header is not [soft, hard]"),
    ("eta", "tomorrow", "its eta header is not an ISO 8601 time"),
    ("eta", 1700000000, "its eta header is not an ISO 8601 time"),
    ("expires", ["2026-01-01"], "its expires header is not an ISO 8601 time"),
    ("retries", "three", "its retries header is not a whole number of 0 or more"),
    ("retries", -1, "its retries header is not a whole number of 0 or more"),
    ("retries", True, "its retries header is not a whole number of 0 or more"),
    ("argsrepr", 42, "its argsrepr header is not a string"),
    ("kwargsrepr", {"a": 1}, "its kwargsrepr header is not a string"),
    ("root_id", [1, 2], "its root_id header is not a string"),
    ("parent_id", 7, "its parent_id header is not a string"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("header", "value", "reason"), HOSTILE_HEADERS, ids=[f"{h}={v!r}" for h, v, _ in HOSTILE_HEADERS]
)
def test_a_task_message_with_a_hostile_header_is_dead_lettered_unrun(
    probe: ConsumerProbe, header: str, value: Any, reason: str
) -> None:
    rt = probe.rt
    headers, payload = celery_message(rt, "payment.capture", {"order_id": "o-1"})
    body = json.dumps(payload).encode()
    assert probe.deliver(body, headers).handed_on == 1  # the genuine message goes through

    headers, payload = celery_message(rt, "payment.capture", {"order_id": "o-1"})
    outcome = probe.deliver(json.dumps(payload).encode(), {**headers, header: value})
    assert outcome.handed_on == 0 and outcome.rejected and not outcome.requeued
    assert outcome.dead_letter is not None
    assert outcome.dead_letter.reason == f"invalid task message: {reason}"
    assert outcome.dead_letter.message_key == headers["id"]


#: kombu/AMQP properties of the wrong type or value, as (deliver's keyword arguments, the
#: reason). RabbitMQ's wire types most of them; on Redis kombu carries them as JSON.
HOSTILE_PROPERTIES: list[tuple[str, dict[str, Any], str]] = [
    ("correlation_id=42", {"properties": {"correlation_id": 42}}, "its correlation_id property is not a string"),
    ("reply_to={}", {"properties": {"reply_to": {"queue": "x"}}}, "its reply_to property is not a string"),
    ("priority='high'", {"properties": {"priority": "high"}}, "its priority property is not a number from 0 to 255"),
    ("priority=300", {"properties": {"priority": 300}}, "its priority property is not a number from 0 to 255"),
    (
        "delivery_mode=true",
        {"properties": {"delivery_mode": True}},
        "its delivery_mode property is not a number from 0 to 255",
    ),
    ("delivery_info='x'", {"delivery_info": "payment.task"}, "its delivery_info is not an object"),
    (
        "routing_key=[]",
        {"delivery_info": {"routing_key": ["payment"]}},
        "its delivery_info routing_key is not a string",
    ),
    ("content_type=7", {"content_type": 7}, "its content_type property is not a string"),
    ("content_encoding=utf-99", {"content_encoding": "utf-99"}, "its content_encoding 'utf-99' is not utf-8"),
    ("content_encoding=latin-1", {"content_encoding": "latin-1"}, "its content_encoding 'latin-1' is not utf-8"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("label", "fields", "reason"), HOSTILE_PROPERTIES, ids=[c[0] for c in HOSTILE_PROPERTIES])
def test_a_message_with_hostile_properties_is_dead_lettered_unrun(
    probe: ConsumerProbe, label: str, fields: dict[str, Any], reason: str
) -> None:
    rt = probe.rt
    headers, payload = celery_message(rt, "payment.capture", {"order_id": "o-1"})
    genuine = {"correlation_id": headers["id"], "reply_to": str(uuid.uuid4()), "priority": 0, "delivery_mode": 2}
    assert probe.deliver(json.dumps(payload).encode(), headers, properties=genuine).handed_on == 1

    headers, payload = celery_message(rt, "payment.capture", {"order_id": "o-1"})
    fields = {**fields, "properties": {**genuine, **fields.get("properties", {})}}
    outcome = probe.deliver(json.dumps(payload).encode(), headers, **fields)
    assert outcome.handed_on == 0 and outcome.rejected and not outcome.requeued, outcome
    assert outcome.dead_letter is not None
    assert outcome.dead_letter.reason == f"invalid message: {reason}"
    assert outcome.dead_letter.message_key == headers["id"]
    if "delivery_info" not in fields:  # else the queue is the one the worker consumes (none here)
        assert outcome.dead_letter.queue == "payment"


#: Bodies that do not match what their properties say, and how their reason begins.
MISMATCHED_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("content_type unknown", {"content_type": "application/x-bogus"}, "invalid task message: Refusing to deserialize"),
    ("body not JSON", {"body": b"<task>capture</task>"}, "undecodable message: "),
    (
        "compression unknown",
        {"compression": "application/x-bogus"},
        "undecodable message: its compression header 'application/x-bogus' names no compression kombu knows",
    ),
    ("compression not a name", {"compression": ["zlib"]}, "undecodable message: its compression header \"['zlib']\""),
    (
        "body not compressed",
        {"compression": "application/x-gzip"},
        "undecodable message: its body is not application/x-gzip data",
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("label", "wrong", "reason"), MISMATCHED_BODIES, ids=[c[0] for c in MISMATCHED_BODIES])
def test_a_body_that_does_not_match_its_properties_is_dead_lettered_unrun(
    probe: ConsumerProbe, label: str, wrong: dict[str, Any], reason: str
) -> None:
    headers, payload = celery_message(probe.rt, "payment.capture", {"order_id": "o-1"})
    if "compression" in wrong:
        headers = {**headers, "compression": wrong["compression"]}
    body = wrong.get("body", json.dumps(payload).encode())
    outcome = probe.deliver(body, headers, content_type=wrong.get("content_type", "application/json"))
    assert outcome.handed_on == 0 and outcome.rejected and not outcome.requeued and not outcome.acked, outcome
    assert outcome.dead_letter is not None
    assert outcome.dead_letter.reason.startswith(reason), outcome.dead_letter.reason
    assert outcome.dead_letter.message_key == headers["id"]


@pytest.mark.timeout(30)
def test_the_message_size_limit_has_a_floor() -> None:
    with pytest.raises(ValidationError, match="max_message_bytes"):
        Settings(max_message_bytes=100)


# --- credentials -----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("field", "url", "secret"),
    [
        ("broker_url", "amqp://guest:guest@rabbitmq:5672//", "guest:guest"),
        ("broker_url", "amqp://rabbitmq.internal:5672//", None),  # kombu logs in as guest/guest
        ("broker_url", "amqp://checkout:checkout@10.0.0.5:5672//", "checkout:checkout"),
        ("broker_url", "amqp://ops@rabbitmq.internal//", None),  # no password: kombu sends guest
        ("broker_url", "amqp://ops:Str0ng-Pass@127.0.0.1//;amqp://guest:guest@mq2.internal//", "guest:guest"),
        ("broker_url", "redis://redis.internal:6379/0", None),  # Redis's default: no password at all
        ("broker_url", "redis://:changeme@redis.internal:6379/0", "changeme"),
        ("result_backend", "redis://default:redis@10.1.2.3:6379/1", "redis@"),
        ("result_backend", "db+postgresql+psycopg://checkout:checkout@postgres/checkout", "checkout:checkout"),
        ("database_url", "postgresql+psycopg://postgres:postgres@db.internal:5432/checkout", "postgres:postgres"),
        ("payment_database_url", "postgresql+psycopg://pay:Password@db.internal/pay", "Password"),
    ],
)
def test_default_credentials_to_another_host_are_refused(field: str, url: str, secret: str | None) -> None:
    overrides: dict[str, Any] = {"broker_url": "redis://127.0.0.1:6379/0", field: url}
    with pytest.raises(ValidationError) as caught:
        Settings(**overrides)
    message = str(caught.value)
    variable = f"CHECKOUT_{field.upper()}"
    assert variable in message and "CHECKOUT_ALLOW_DEFAULT_CREDENTIALS=true" in message, message
    if secret is not None:
        assert secret not in message, "the refusal shows the password"
    # a development machine may say so explicitly
    Settings(**overrides, allow_default_credentials=True)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "overrides",
    [
        # this machine's own servers, as the test suite and CI use them
        {
            "broker_url": "amqp://guest:guest@127.0.0.1:5672//",
            "database_url": "postgresql+psycopg://postgres@127.0.0.1/x",
        },
        {"broker_url": "redis://127.0.0.1:6379/3", "result_backend": "redis://localhost:6379/4"},
        {"broker_url": "amqp://guest:guest@[::1]:5672//", "database_url": "postgresql://postgres:postgres@localhost/x"},
        # real passwords; a SQL URL without one (the driver reads PGPASSWORD or ~/.pgpass)
        {"broker_url": "amqp://checkout:n0t-a-default-9f3@rabbitmq:5672//"},
        {"broker_url": "rediss://:Zq7-long-random@redis.internal:6380/0"},
        {"broker_url": "redis://:Zq7-long-random@redis:6379/0", "database_url": "postgresql+psycopg://checkout@db/x"},
        # embedded mode talks to no server
        {"broker_url": "memory://localhost/", "database_url": "postgresql+psycopg://postgres:postgres@db/x"},
    ],
)
def test_loopback_real_passwords_and_embedded_mode_are_fine(overrides: dict[str, Any]) -> None:
    Settings(**overrides)


@pytest.mark.timeout(30)
def test_a_refused_url_never_appears_in_the_error() -> None:
    secret = "changeme"
    with pytest.raises(ValidationError) as caught:
        Settings(broker_url=f"redis://:{secret}@redis.example:6379/0")
    assert secret not in str(caught.value) and secret not in repr(caught.value)


@pytest.mark.timeout(90)
def test_a_worker_with_default_credentials_does_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(CHECKOUT_BROKER_URL="amqp://guest:guest@rabbitmq.example:5672//", CHECKOUT_DATA_DIR=str(tmp_path))
    done = start_worker("payment", env)
    assert done.returncode != 0
    assert "CHECKOUT_BROKER_URL logs in to rabbitmq.example as guest with a default password" in done.stderr
    assert "guest:guest" not in done.stderr + done.stdout


@pytest.mark.timeout(30)
def test_secrets_come_only_from_the_environment() -> None:
    config = Settings.model_config
    assert config.get("env_file") is None and config.get("secrets_dir") is None, "settings must not read files"
    secrets = {name: field for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    assert {"flower_password", "signing_key", "signing_key_password"} <= set(secrets)
    assert all(field.default is None for field in secrets.values()), "a secret with a default in code"
    for name in ("broker_url", "result_backend", "database_url"):
        default = Settings.model_fields[name].default
        assert default is None or "@" not in str(default), f"{name} has credentials in its default"


@pytest.mark.timeout(30)
def test_the_settings_command_shows_no_password(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from app.cli.settings import settings as cmd_settings

    for name in [k for k in os.environ if k.startswith("CHECKOUT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHECKOUT_BROKER_URL", "amqp://ops:s3cr3t-Pw-1@127.0.0.1:5672//")
    monkeypatch.setenv("CHECKOUT_DATABASE_URL", "postgresql+psycopg://svc:an0ther-pw@127.0.0.1/x")
    monkeypatch.setenv("CHECKOUT_FLOWER_PASSWORD", "flower-pw-42")
    assert cmd_settings() == 0
    out = capsys.readouterr().out
    for secret in ("s3cr3t-Pw-1", "an0ther-pw", "flower-pw-42"):
        assert secret not in out
    assert "amqp://ops:***@127.0.0.1:5672//" in out and "svc:***@127.0.0.1" in out


@pytest.mark.timeout(30)
def test_redact_url() -> None:
    assert redact_url("amqp://a:b@h1//;amqp://c:d@h2//") == "amqp://a:***@h1//;amqp://c:***@h2//"
    assert redact_url("redis://:p%40ss@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("sqlite:///var/x.db") == "sqlite:///var/x.db"


@pytest.mark.timeout(60)
def test_the_largest_saga_message_fits_the_default_size_limit_signed(signed_settings: Settings) -> None:
    """The biggest order the API accepts — 100 lines of 32-character SKUs, every address
    field at its longest — makes saga messages well under CHECKOUT_MAX_MESSAGE_BYTES's
    default, signed (the signature adds a third: the body is base64 inside)."""
    from kombu.transport import memory

    from app.domain.commands import AuthorizePayment, CapturePayment, CompleteOrder, ReserveInventory, ScheduleShipment
    from app.messaging.canvas import build_saga

    purge_memory_broker()
    rt = Runtime(signed_settings)
    try:
        order_id = str(uuid.uuid4())
        lines = [{"sku": f"{n:032d}", "qty": 1000} for n in range(100)]
        address = {"name": "N" * 100, "line1": "L" * 200, "city": "C" * 100, "postal_code": "P" * 20, "country": "FR"}
        commands = {
            "reserve_inventory": ReserveInventory(order_id=order_id, lines=lines),
            "authorize_payment": AuthorizePayment(
                order_id=order_id, amount_cents=2**31 - 1, currency="EUR", payment_token="tok_" + "x" * 60
            ),
            "schedule_shipping": ScheduleShipment(order_id=order_id, ship_to=address, lines=lines),
            "capture_payment": CapturePayment(order_id=order_id),
            "complete_order": CompleteOrder(order_id=order_id),
        }
        assert set(commands) == {step.name for step in rt.saga.steps}
        build_saga(
            rt.celery, rt.saga, order_id, {k: v.model_dump(mode="json") for k, v in commands.items()}
        ).apply_async()
        sizes = [
            len(base64.b64decode(message["body"]))
            for queue in memory.Channel.queues.values()
            for message in list(queue.queue)
        ]
    finally:
        rt.close()
        purge_memory_broker()
    assert len(sizes) == 2, sizes  # the chord's two header tasks, each carrying the rest of the saga
    limit = Settings.model_fields["max_message_bytes"].default
    print(f"\nlargest signed saga message: {max(sizes)} bytes (limit {limit})")
    assert max(sizes) < limit / 2, sizes
