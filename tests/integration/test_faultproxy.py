"""The fault proxy of the network-fault tests (tests/support/faultproxy.py), on real sockets
against a small echo server: each mode does what those tests rely on."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import wait_until
from tests.support.faultproxy import FaultProxy

#: A bounded wait for something that must NOT arrive (a negative can only be shown by
#: waiting); short, since the proxy delivers in microseconds when it does deliver.
SILENCE = 0.5


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*echo, seed=7) as proxy:
        yield proxy


def connect(proxy: FaultProxy, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def round_trip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def silent(sock: socket.socket) -> bool:
    """True when nothing (no byte, no close) arrives within SILENCE."""
    sock.settimeout(SILENCE)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10.0)
    return False


@pytest.mark.timeout(30)
def test_pass_through_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"x" * 200_000) == b"x" * 200_000
    wait_until(lambda: proxy.stats.open == 0, timeout=10, what="the proxy to drop its links")
    assert proxy.stats.accepted == 1


@pytest.mark.timeout(30)
def test_blackhole_keeps_connections_open_carrying_nothing_and_they_stay_dead(proxy: FaultProxy) -> None:
    with connect(proxy) as before:
        assert round_trip(before) == b"ping"
        proxy.blackhole()
        before.sendall(b"lost")
        assert silent(before), "a blackholed connection answered or closed"
        with connect(proxy) as during:  # accepted ...
            during.sendall(b"hello")
            assert silent(during)  # ... and carries nothing
            proxy.pass_through()
            # healed: what was blackholed stays dead (its bytes are gone), a new one works
            before.sendall(b"again")
            during.sendall(b"again")
            assert silent(before) and silent(during)
            with connect(proxy) as after:
                assert round_trip(after) == b"ping"
    assert proxy.stats.swallowed_bytes >= len(b"lost" + b"hello" + b"again" * 2)


@pytest.mark.timeout(30)
def test_latency_delays_every_chunk_each_way_and_a_drop_stalls_what_follows(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.latency(100)
        began = time.monotonic()
        assert round_trip(sock) == b"ping"
        assert time.monotonic() - began >= 0.2  # 100 ms out, 100 ms back
        proxy.latency(0, drop_rate=1.0, stall=(0.3, 0.3))
        began = time.monotonic()
        sock.sendall(b"a")
        sock.sendall(b"b")  # behind a stalled chunk: never overtakes it
        got = b""
        while len(got) < 2:
            got += sock.recv(2)
        assert got == b"ab"
        assert time.monotonic() - began >= 0.6  # stalled out and back
        proxy.pass_through()
        began = time.monotonic()
        assert round_trip(sock) == b"ping"
    assert proxy.stats.dropped >= 2
    with pytest.raises(ValueError):
        proxy.latency(10, drop_rate=1.5)


@pytest.mark.timeout(30)
def test_reset_sends_rst_on_every_open_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as one, connect(proxy) as two:
        assert round_trip(one) == b"ping" and round_trip(two) == b"ping"
        assert proxy.reset() == 2
        for sock in (one, two):
            with pytest.raises(ConnectionResetError):
                round_trip(sock)
    with connect(proxy) as three:  # the mode is unchanged: new connections pass
        assert round_trip(three) == b"ping"
    assert proxy.stats.resets == 2
