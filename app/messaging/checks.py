"""What is wrong with a delivered message, before Celery reads it.

Celery and kombu take a message's properties, task headers and body as given. A foreign or
broken producer can send any of them with the wrong type or shape, and some of those raise
inside the worker's consumer, or inside the pool, instead of being rejected — or pass
through unchecked and break the message's retry later. Each check here names what is wrong
(a sentence for the dead letter's reason), or returns None; the consumer
(:mod:`app.messaging.consumer`) dead-letters what they refuse.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kombu.compression import get_decoder
from kombu.message import Message

#: Longest task id accepted (Celery's are UUIDs; the saga's ``<order id>.<step>``).
MAX_TASK_ID = 128

#: What protocol 2 embeds in a task message's body besides the arguments.
EMBED_LISTS = ("callbacks", "errbacks", "chain")

#: Headers of protocol 2 that are a string when present (None allowed).
TEXT_HEADERS = ("root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin", "lang", "shadow")
#: Headers that are an ISO 8601 time when present (None allowed).
TIME_HEADERS = ("eta", "expires")

#: AMQP 0-9-1 basic properties that are short strings, and those that are octets (0-255).
#: RabbitMQ's wire keeps them so; on Redis kombu carries the properties as JSON, where a
#: producer can put anything. Celery copies ``reply_to``, ``correlation_id`` and
#: ``priority`` into the task's request, and a retry publishes them again.
TEXT_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "type",
    "app_id",
    "user_id",
    "expiration",
)
OCTET_PROPERTIES = ("priority", "delivery_mode")
#: Fields of the delivery that Celery reads, and that are strings when present.
TEXT_DELIVERY_FIELDS = ("exchange", "routing_key", "consumer_tag")

#: The one text encoding a message body may declare: JSON on the wire is UTF-8 (RFC 8259),
#: and so is a signed message.
BODY_ENCODING = "utf-8"


def headers_of(message: Message) -> dict[str, Any]:
    """The message's headers, or {} when they are not a table."""
    headers = message.headers
    return headers if isinstance(headers, dict) else {}


#: Content types whose body is text (JSON; the signing serializer's): their encoding must be UTF-8.
TEXT_CONTENT_TYPES = frozenset({"application/json", "application/data"})


def delivery_of(message: Message) -> dict[str, Any]:
    """The message's delivery information, or {} when it is not an object."""
    info = message.delivery_info
    return info if isinstance(info, dict) else {}


def _is_octet(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def property_problem(message: Message) -> str | None:
    """What is wrong with a message's properties (any message, a task's or not), or None."""
    properties = message.properties
    if not isinstance(properties, dict):
        return "its properties are not an object"
    if not isinstance(message.delivery_info, dict):
        return "its delivery_info is not an object"
    fields = {**properties, "content_type": message.content_type, "content_encoding": message.content_encoding}
    for key in TEXT_PROPERTIES:
        if fields.get(key) is not None and not isinstance(fields[key], str):
            return f"its {key} property is not a string"
    for key in OCTET_PROPERTIES:
        if properties.get(key) is not None and not _is_octet(properties[key]):
            return f"its {key} property is not a number from 0 to 255"
    delivery = delivery_of(message)
    for key in TEXT_DELIVERY_FIELDS:
        if delivery.get(key) is not None and not isinstance(delivery[key], str):
            return f"its delivery_info {key} is not a string"
    encoding = message.content_encoding
    # a body of a content type the worker does not accept (pickle, say: encoding "binary")
    # is refused as such by Celery's own path, which names the content type
    if encoding is not None and message.content_type in TEXT_CONTENT_TYPES and _codec_name(encoding) != BODY_ENCODING:
        return f"its content_encoding {encoding[:64]!r} is not {BODY_ENCODING}"
    return None


#: The property of a payload that was not a kombu message envelope, on the envelope the
#: Redis transport gives it (:mod:`app.messaging.redis_transport`): what was wrong with it.
UNREADABLE = "checkout_unreadable_envelope"


def unreadable_problem(message: Message) -> str | None:
    """What was wrong with the payload a message stands for, when it was not a kombu
    message envelope; None for any other message."""
    properties = message.properties
    problem = properties.get(UNREADABLE) if isinstance(properties, dict) else None
    return problem if isinstance(problem, str) else None


#: Fields of a kombu envelope's delivery_info that its Redis transport reads as strings.
ENVELOPE_DELIVERY_FIELDS = ("exchange", "routing_key")


def envelope_problem(payload: Any, codecs: Mapping[str, Any]) -> str | None:
    """What keeps a payload taken off a Redis list from being a kombu message, or None.

    kombu's Redis transport carries each message as a JSON object — ``body`` (a string, in
    ``properties.body_encoding``), ``content-type``, ``content-encoding``, ``headers`` and
    ``properties`` holding ``delivery_tag`` and ``delivery_info`` (``exchange``,
    ``routing_key``) — and reads those fields as given, before any other check can run: a
    payload that gets one wrong raises inside the worker's consumer loop, after the message
    has left its queue, or is lost when it is handed back. ``codecs`` are the body
    encodings the transport knows (``Channel.codecs``)."""
    if not isinstance(payload, dict):
        return "it is not a JSON object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "its properties are missing or not an object"
    if not isinstance(payload.get("headers", {}), dict):
        return "its headers are not an object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "its delivery_tag is missing or not a string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        return "its delivery_info is missing or not an object"
    for key in ENVELOPE_DELIVERY_FIELDS:
        if not isinstance(info.get(key), str):
            return f"its delivery_info {key} is missing or not a string"
    return _body_problem(payload.get("body"), properties.get("body_encoding"), codecs)


def _body_problem(body: Any, encoding: Any, codecs: Mapping[str, Any]) -> str | None:
    """What keeps kombu from decoding an envelope's body, or None."""
    if not isinstance(body, str):
        return "its body is missing or not a string"
    if not encoding:  # kombu decodes no body without one
        return None
    if not isinstance(encoding, str):
        return "its body_encoding is not a string"
    if encoding.lower() == BODY_ENCODING:
        return None
    codec = codecs.get(encoding)
    if codec is None:
        return f"its body_encoding {encoding[:64]!r} names no encoding kombu knows"
    try:
        codec.decode(body)
    except Exception:  # binascii.Error, or whatever another codec raises
        return f"its body is not {encoding[:64]} data"
    return None


def _codec_name(encoding: str) -> str | None:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return None


def compression_problem(message: Message, error: BaseException) -> str | None:
    """Why the body of a message with a ``compression`` header could not be read, or None
    when it has none (kombu decompresses on receipt, and gives only the bare error)."""
    name = headers_of(message).get("compression")
    if name is None:
        return None
    try:
        get_decoder(name)
    except (KeyError, TypeError):
        return f"its compression header {str(name)[:64]!r} names no compression kombu knows"
    return f"its body is not {name} data ({error})"


def shape_problem(message: Message, tasks: Any) -> str | None:
    """What is wrong with a message that names a task (Celery protocol 2), or None.

    Celery unpacks these fields without checking them, inside its consumer: a message
    that got them wrong would raise there, never be rejected, and come back for ever."""
    headers = headers_of(message)
    name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(name, str):
        return "its task header is not a string"
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID:
        return f"its id header is not a string of 1 to {MAX_TASK_ID} characters"
    problem = header_problem(headers)
    if problem is not None:
        return problem
    task = tasks.get(name)
    if task is None:
        return None  # an unknown task: Celery's own check names it
    payload = message.payload  # decoded (and its signature checked) once; Celery reuses it
    if not (isinstance(payload, (list, tuple)) and len(payload) == 3):
        return "the body is not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return "the body's args are not a list or its kwargs not an object"
    if embed is not None:
        problem = _embed_problem(embed)
        if problem is not None:
            return problem
    check = getattr(task, "__header__", None)
    if check is not None:
        try:
            check(*args, **kwargs)
        except TypeError as exc:
            return f"its arguments do not fit {name}: {exc}"
    return None


def header_problem(headers: dict[str, Any]) -> str | None:
    """What is wrong with a task message's headers, or None. Celery reads them as given: a
    ``timelimit`` of two strings made the pool's own process fail, taking the worker down
    with the message still unacknowledged, on every redelivery."""
    for key in TEXT_HEADERS:
        if headers.get(key) is not None and not isinstance(headers[key], str):
            return f"its {key} header is not a string"
    for key in TIME_HEADERS:
        value = headers.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"its {key} header is not an ISO 8601 time"
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return f"its {key} header is not an ISO 8601 time"
    retries = headers.get("retries", 0)
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        return "its retries header is not a whole number of 0 or more"
    limits = headers.get("timelimit")
    if limits is not None:
        if not (isinstance(limits, (list, tuple)) and len(limits) == 2):
            return "its timelimit header is not [soft, hard]"
        for limit in limits:
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0):
                return "its timelimit header holds something other than a number of seconds (or null)"
    return None


def _embed_problem(embed: Any) -> str | None:
    if not isinstance(embed, dict):
        return "the body's embed is not an object"
    for key in EMBED_LISTS:
        value = embed.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return f"the body's {key} is not a list of signatures"
    if embed.get("chord") is not None and not isinstance(embed["chord"], dict):
        return "the body's chord is not a signature"
    return None
