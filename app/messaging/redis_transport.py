"""kombu's Redis transport, for payloads that are not kombu messages.

kombu's Redis transport carries each message as a JSON envelope on the queue's list and
reads it as given: a payload pushed there by anything else (``LPUSH`` of text that is not
JSON, or of JSON whose ``properties``, ``delivery_info`` or ``headers`` are not objects)
raises inside the worker's consumer loop after ``BRPOP`` took it off the list — before any
check of the worker's consumer runs — and is gone, or comes apart when kombu hands an
unacknowledged message back.

This transport (``broker_transport``, see ``config/celery.py``) reads each payload where
kombu decodes it. A readable envelope goes on unchanged. Anything else becomes an envelope
of its own, to the same queue: its body is the payload's raw bytes and its
:data:`UNREADABLE` property says what is wrong. kombu then holds it as unacknowledged like
any message (a worker that dies now hands it back, readable), and the worker's consumer
(:mod:`app.messaging.consumer`) keeps it as a dead letter with that reason and drops it
from the queue. The cost on the normal path is the checks of :func:`envelope_problem`.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

import redis as redis_py
from kombu import Connection
from kombu.transport import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from app.messaging.checks import UNREADABLE, envelope_problem

log = logging.getLogger("checkout.consumer")

#: Reason prefix of such a payload's dead letter.
NOT_AN_ENVELOPE = "not a kombu message envelope"

#: Of an unreadable payload, the characters quoted in its reason.
QUOTED = 64


def unreadable_envelope(raw: bytes, queue: str, problem: str) -> dict[str, Any]:
    """The kombu envelope that carries an unreadable payload to the worker's consumer: the
    raw bytes as its body, what was wrong in its :data:`UNREADABLE` property, and the
    default exchange with the queue's name as its route (where kombu hands it back to)."""
    return {
        "body": base64.b64encode(raw).decode(),
        "content-type": None,
        "content-encoding": None,
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            UNREADABLE: f"{NOT_AN_ENVELOPE}: {problem}",
        },
    }


def read_envelope(item: bytes | str, queue: str, codecs: Any) -> dict[str, Any]:
    """The kombu envelope of a payload taken off ``queue``'s list: the payload itself when
    it is one, otherwise :func:`unreadable_envelope`."""
    raw = item if isinstance(item, bytes) else item.encode()
    try:
        payload = loads(bytes_to_str(item))
    except (TypeError, ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        problem: str | None = f"not JSON ({str(exc)[:QUOTED]}): {raw[:QUOTED]!r}"
    else:
        problem = envelope_problem(payload, codecs)
    if problem is None:
        payload["properties"].pop(UNREADABLE, None)  # only this transport says so
        return dict(payload)
    log.warning("a payload on queue %s is not a kombu message envelope: %s", queue, problem)
    return unreadable_envelope(raw, queue, problem)


class Channel(redis.Channel):
    """kombu's Redis channel, reading each payload it takes off a list with :func:`read_envelope`;
    a channel whose connection was already let go fails as a lost connection (see :meth:`_connparams`)."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        # On a lost connection Celery's consumer first collects it, which lets its transport go
        # (``transport.client = None``), then closes it: the channel, closed again, tries again to
        # hand back its unacknowledged messages, and kombu would read the settings of a client that
        # is gone (AttributeError: the worker exits, "Unrecoverable error"). A connection error
        # instead is what both callers ignore; the messages stay unacknowledged under the broker's
        # visibility timeout, which hands them back.
        if self.connection.client is None:
            raise redis_py.exceptions.ConnectionError("this channel's broker connection was already closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's Channel._brpop_read (kombu 5.7), with the payload read by read_envelope
        # instead of json.loads
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # disconnect, so that the next iteration reconnects
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                self.connection._deliver(read_envelope(item, dest, self.codecs), dest)
                return True
            raise redis.Empty()
        finally:
            self._in_poll = False  # kombu's None: no BRPOP on the wire (tested for truth)
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        # kombu's Channel._get (kombu 5.7: basic_get, Queue.get), read the same way
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    return read_envelope(item, queue, self.codecs)
            self._maybe_update_queues_expire(client, queue)
            raise redis.Empty()


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel` (``redis://``)."""

    Channel = Channel


class SecureTransport(Transport):
    """The same over TLS (``rediss://``)."""


# A connection names its transport as its URL's scheme (``Connection.as_uri``: worker
# banners, Flower, which reads the broker's queue lengths from it): these are Redis's.
Connection.resolve_aliases.update({f"{__name__}:Transport": "redis", f"{__name__}:SecureTransport": "rediss"})
