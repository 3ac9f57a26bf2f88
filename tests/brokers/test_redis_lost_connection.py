"""A Redis connection lost with a message unacknowledged, over the system's own Redis
transport and a real Redis behind a proxy that goes away, let go the way Celery's consumer
lets it go (``on_connection_error_after_connected``: ``collect()``, then ``close()``) while the
worker still holds the message it received.

Whatever then touches the channel — closing it again, or the acknowledgement of that
message when the worker's event loop closes — found kombu's transport already let go
(``client`` None) and raised ``AttributeError``, which no caller expects: the worker process
exited ("Unrecoverable error") on a Redis restart instead of reconnecting. It must fail as a
lost connection does (a connection error, which the callers ignore), and the message stay
unacknowledged, where the broker's visibility timeout hands it back from."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
from kombu import Connection, Consumer, Queue

from app.messaging.redis_transport import Transport
from tests.brokers.test_network_faults import upstream
from tests.support.cluster import REDIS_URL, redis_client
from tests.support.faultproxy import FaultProxy

pytestmark = [pytest.mark.brokers, pytest.mark.timeout(60)]


def test_a_channel_of_a_connection_let_go_fails_as_a_lost_connection_and_keeps_its_message() -> None:
    prefix = f"lost-{uuid.uuid4().hex[:8]}:"
    queue = Queue(f"{prefix}q", routing_key=f"{prefix}q")
    options = {"global_keyprefix": prefix, "socket_timeout": 2, "socket_connect_timeout": 2}
    host, port = upstream(REDIS_URL)
    database = REDIS_URL.rsplit("/", 1)[1]
    redis = redis_client()
    received: list[Any] = []
    try:
        with FaultProxy(host, port) as proxy:
            connection = Connection(
                f"redis://127.0.0.1:{proxy.port}/{database}", transport=Transport, transport_options=options
            )
            lost = connection.connection_errors
            with connection.Producer() as producer:
                producer.publish({"n": 1}, routing_key=queue.routing_key, declare=[queue], retry=False)
            consumer = Consumer(connection.default_channel, [queue], callbacks=[lambda _b, m: received.append(m)])
            consumer.consume()
            connection.drain_events(timeout=5)
            assert len(received) == 1
            with pytest.raises(socket.timeout):  # a BRPOP is on the wire, as in a worker's loop
                connection.drain_events(timeout=0.3)
            proxy.reset()
        # the proxy is gone: a new connection to it is refused, as by a Redis that is down
        try:
            connection.collect(socket_timeout=2)
        except Exception:  # noqa: BLE001 - as Celery's consumer, which ignores whatever collect raises
            pass
        try:
            connection.close()
        except lost:
            pass
        # where a worker's log shows the loop's close finding it: the transport let go and the
        # channel's pools dropped (its close got that far), so the next command builds a pool anew
        channel = received[0].channel
        channel._disconnect_pools()
        assert channel.connection.client is None
        message = received[0]
        with pytest.raises(lost):  # before the transport's guard: AttributeError ('NoneType' ... 'hostname')
            message.ack()

        unacked = redis.hgetall(f"{prefix}unacked")
        assert list(unacked) == [message.delivery_tag.encode()], "the unacknowledged message is kept"
    finally:
        for key in redis.scan_iter(f"{prefix}*"):
            redis.delete(key)
