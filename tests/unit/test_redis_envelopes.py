"""Payloads on a Redis queue's list that are not kombu message envelopes, without a broker.

* :func:`app.messaging.checks.envelope_problem` passes what kombu writes and names what is
  wrong with anything else;
* :func:`app.messaging.redis_transport.read_envelope`, given any bytes, returns an envelope
  kombu reads without raising — the payload itself, or one carrying its raw bytes and why;
* the worker's consumer dead-letters such an envelope with that reason and the raw bytes;
* every process names the transport for ``redis://`` and ``rediss://`` brokers, and keeps
  TLS and the URL's scheme.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection

from app.bootstrap import Runtime
from app.messaging.checks import UNREADABLE, envelope_problem
from app.messaging.redis_transport import read_envelope
from config.celery import REDIS_TRANSPORTS, celery_config
from config.settings import Settings
from tests.conftest import purge_memory_broker
from tests.support.consumer import ConsumerProbe
from tests.unit.test_properties import PROPERTY, encode, json_values

CODECS = {"base64": object()}  # only its keys matter, except for a body to decode


@pytest.fixture(scope="module")
def channel() -> Iterator[Any]:
    """A kombu virtual channel (memory): it writes and reads envelopes as the Redis one does."""
    with Connection("memory://") as conn:
        yield conn.default_channel


def kombu_envelope(channel: Any, body: str = '[[{"order_id": "o-1"}], {}, {}]') -> dict[str, Any]:
    """An envelope exactly as kombu's virtual transports put it on a queue."""
    message = channel.prepare_message(
        body, priority=0, content_type="application/json", content_encoding="utf-8", headers={"task": "order.start"}
    )
    channel._inplace_augment_message(message, "checkout", "order.task")
    return dict(json.loads(json.dumps(message)))  # as it comes back off the list


def test_what_kombu_writes_is_an_envelope(channel: Any) -> None:
    envelope = kombu_envelope(channel)
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope_problem(envelope, channel.codecs) is None
    assert read_envelope(json.dumps(envelope).encode(), "order", channel.codecs) == envelope


def _changed(envelope: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``envelope`` with the field at ``path`` (``properties.delivery_tag``) set, or removed for ``...``."""
    changed = json.loads(json.dumps(envelope))
    *parents, field = path.split(".")
    target = changed
    for parent in parents:
        target = target[parent]
    if value is ...:
        del target[field]
    else:
        target[field] = value
    return dict(changed)


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("properties", ..., "its properties are missing or not an object"),
        ("properties", ["delivery_tag"], "its properties are missing or not an object"),
        ("headers", "task", "its headers are not an object"),
        ("headers", None, "its headers are not an object"),
        ("properties.delivery_tag", ..., "its delivery_tag is missing or not a string"),
        ("properties.delivery_tag", 7, "its delivery_tag is missing or not a string"),
        ("properties.delivery_info", "order", "its delivery_info is missing or not an object"),
        ("properties.delivery_info", ..., "its delivery_info is missing or not an object"),
        ("properties.delivery_info.exchange", ..., "its delivery_info exchange is missing or not a string"),
        ("properties.delivery_info.routing_key", 5, "its delivery_info routing_key is missing or not a string"),
        ("body", ..., "its body is missing or not a string"),
        ("body", {"a": 1}, "its body is missing or not a string"),
        ("body", "A", "its body is not base64 data"),
        ("properties.body_encoding", "rot13", "its body_encoding 'rot13' names no encoding kombu knows"),
        ("properties.body_encoding", ["base64"], "its body_encoding is not a string"),
    ],
)
def test_envelope_problem_names_what_is_wrong(channel: Any, path: str, value: Any, problem: str) -> None:
    envelope = _changed(kombu_envelope(channel), path, value)
    assert envelope_problem(envelope, channel.codecs) == problem


@pytest.mark.parametrize("payload", [[1, 2], "text", 42, None, True])
def test_json_that_is_not_an_object_is_no_envelope(payload: Any) -> None:
    assert envelope_problem(payload, CODECS) == "it is not a JSON object"


def test_a_body_without_encoding_is_not_decoded(channel: Any) -> None:
    for encoding in (None, "utf-8", "UTF-8", ""):
        envelope = _changed(kombu_envelope(channel), "properties.body_encoding", encoding)
        envelope["body"] = "not base64 at all!"
        assert envelope_problem(envelope, channel.codecs) is None, encoding


def kombu_reads(channel: Any, envelope: dict[str, Any]) -> Any:
    """What kombu's Redis transport does with an envelope it delivers, and hands back: a
    message built from it, its route read, its redelivery marked — none may raise."""
    message = channel.Message(envelope, channel=channel)
    info = message.delivery_info
    assert isinstance(info["exchange"], str) and isinstance(info["routing_key"], str)
    json.dumps([message._raw, info["exchange"], info["routing_key"]])  # kept while unacknowledged
    envelope["headers"]["redelivered"] = True  # as kombu hands it back
    envelope["properties"]["delivery_info"]["redelivered"] = True
    return message


raw_payloads = (
    st.binary(max_size=300)
    | json_values.map(encode)
    | st.dictionaries(
        st.sampled_from(["body", "headers", "properties", "content-type", "content-encoding"]), json_values
    ).map(encode)
)


@PROPERTY
@given(raw=raw_payloads)
def test_any_payload_becomes_an_envelope_kombu_reads(raw: bytes) -> None:
    with Connection("memory://") as conn:
        channel = conn.default_channel
        envelope = read_envelope(raw, "payment", channel.codecs)
        message = kombu_reads(channel, envelope)
    problem = envelope["properties"].get(UNREADABLE)
    if problem is None:
        assert envelope == json.loads(raw)
        return
    assert problem.startswith("not a kombu message envelope: ")
    assert message.body == raw  # the raw bytes, whole
    assert message.delivery_info["routing_key"] == "payment" and message.delivery_info["exchange"] == ""
    assert envelope["headers"] == {"redelivered": True}  # none but kombu's own


def test_a_payload_cannot_claim_to_be_unreadable(channel: Any) -> None:
    envelope = kombu_envelope(channel)
    envelope["properties"][UNREADABLE] = "not a kombu message envelope: made up"
    assert UNREADABLE not in read_envelope(json.dumps(envelope).encode(), "order", channel.codecs)["properties"]


# --- the worker's consumer ---------------------------------------------------------------


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerProbe]:
    purge_memory_broker()
    rt = Runtime(Settings(data_dir=tmp_path_factory.mktemp("envelopes"), max_message_bytes=8192))
    rt.prepare()
    yield ConsumerProbe(rt, "inventory")
    rt.close()
    purge_memory_broker()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"body": not json', "invalid message: not a kombu message envelope: not JSON ("),
        (json.dumps({"body": "", "properties": {"delivery_info": []}}).encode(), "invalid message: not a kombu"),
        (b"\xff" * 9000, "invalid message: not a kombu message envelope: not JSON ("),  # over the size limit
        (b"[" * 5000, "invalid message: not a kombu message envelope: not JSON ("),  # nested too deep to read
    ],
)
def test_the_consumer_dead_letters_an_unreadable_payload_with_its_bytes(
    channel: Any, probe: ConsumerProbe, raw: bytes, reason: str
) -> None:
    raw += uuid.uuid4().bytes if raw.startswith(b"\xff") else b""
    envelope = read_envelope(raw, "inventory", channel.codecs)
    properties = envelope["properties"]
    outcome = probe.deliver(
        channel.decode_body(envelope["body"], properties["body_encoding"]),
        envelope["headers"],
        content_type=None,
        content_encoding=None,
        properties=properties,
        delivery_info=properties["delivery_info"],
    )
    assert outcome.rejected and not outcome.requeued and not outcome.handed_on
    letter = outcome.dead_letter
    assert letter is not None and letter.reason.startswith(reason), letter
    assert (letter.queue, letter.task, letter.order_id) == ("inventory", None, None)
    kept = base64.b64decode(letter.message["body"])
    if len(raw) > 8192:
        assert kept == raw[:4096] and letter.message["truncated"] is True and letter.message["size"] == len(raw)
    else:
        assert kept == raw
    # sent again, it is a message of its own on the queue's route, without this transport's marks
    assert letter.message["headers"] == {} and letter.message["routing_key"] is None


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "ssl"),
    [
        ("redis://127.0.0.1:6379/0", "redis", False),
        ("rediss://:a-long-random-secret@redis.internal:6380/0", "rediss", {"ssl_cert_reqs": 0}),
        ("rediss://:a-long-random-secret@redis.internal:6380/0?ssl_cert_reqs=required", "rediss", {"ssl_cert_reqs": 2}),
    ],
)
def test_redis_brokers_use_the_transport_and_keep_their_scheme_and_tls(url: str, scheme: str, ssl: Any) -> None:
    from celery import Celery

    app = Celery("envelopes", set_as_current=False)
    app.conf.update(celery_config(Settings(broker_url=url, allow_default_credentials=True)))
    with app.connection_for_write() as conn:
        assert conn.transport_cls == REDIS_TRANSPORTS[scheme]
        assert type(conn.transport).__module__ == "app.messaging.redis_transport"
        assert conn.ssl == ssl
        assert conn.as_uri().startswith(f"{scheme}://")  # what Flower reads the broker from


def test_other_brokers_keep_their_own_transport() -> None:
    for url in ("memory://", "amqp://guest:guest@127.0.0.1:5672//"):
        conf = celery_config(Settings(broker_url=url, allow_default_credentials=True))
        assert "broker_transport" not in conf and "broker_use_ssl" not in conf


@pytest.mark.parametrize(
    ("method", "replaced"),
    [
        ("_brpop_read", "self.connection._deliver(loads(bytes_to_str(item)), dest)"),
        ("_get", "return loads(bytes_to_str(item))"),
    ],
)
def test_the_transport_replaces_what_kombu_still_does(method: str, replaced: str) -> None:
    """The channel's two readers are kombu's own with one line changed: a kombu whose
    readers differ needs them copied again (app/messaging/redis_transport.py)."""
    import inspect

    from kombu.transport import redis

    from app.messaging import redis_transport

    assert replaced in inspect.getsource(getattr(redis.Channel, method))
    ours = inspect.getsource(getattr(redis_transport.Channel, method))
    assert "read_envelope(item, " in ours and "loads(" not in ours
