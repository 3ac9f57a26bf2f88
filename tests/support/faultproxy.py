"""A TCP fault proxy for the tests: the network faults Toxiproxy puts between a service and
its dependency, without Toxiproxy (Debian does not package it) and without leaving this
machine.

A :class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every connection to
an upstream (Redis, RabbitMQ, PostgreSQL), from an asyncio loop in a background thread of
the test process. Point a worker's broker or database URL at :attr:`FaultProxy.port` and
switch the proxy at runtime:

* :meth:`pass_through` — bytes flow as they come;
* :meth:`blackhole` — every connection stays open and every byte is swallowed, both ways;
  a new connection is accepted and carries nothing. A connection that was blackholed stays
  dead after the heal: its streams lost bytes, so it can never be resumed — as a broker
  that closed its side on missed heartbeats, or a NAT entry that expired, leaves it. Only a
  client that notices the silence (heartbeats, health checks, timeouts) and reconnects
  recovers;
* :meth:`latency` — ``ms`` added to every chunk, in each direction, and a share
  ``drop_rate`` of the chunks "dropped". TCP never loses bytes: a dropped segment is sent
  again after a retransmission timeout, and every byte behind it waits (head-of-line
  blocking). So a dropped chunk is delayed by a retransmit-like stall (``stall``: a random
  200-1000 ms by default) and nothing overtakes it: that is what "5 % packet drop" looks
  like to an application over TCP;
* :meth:`reset` — every open connection closed with a TCP RST (``SO_LINGER`` 0), on the
  client's side and on the upstream's (PostgreSQL then ends the backend and rolls back its
  transaction), as a failover or a crashed middlebox does. New connections pass again.

pytest-free. Every mode change is thread-safe (it is handed to the proxy's loop).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

PASS, BLACKHOLE, LATENCY = "pass", "blackhole", "latency"
CHUNK = 65536
#: How long a dropped chunk waits before it is "retransmitted", by default (seconds).
DEFAULT_STALL = (0.2, 1.0)


@dataclass
class Stats:
    """What the proxy did so far (read from any thread; written by the loop only)."""

    accepted: int = 0
    closed: int = 0
    resets: int = 0
    chunks: int = 0
    dropped: int = 0
    swallowed_bytes: int = 0
    forwarded_bytes: int = 0

    @property
    def open(self) -> int:
        return self.accepted - self.closed


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    """One proxied connection: the client's socket and the upstream's."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dead: bool = False  # blackholed once: carries nothing ever again
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with an RST instead of a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    """``with FaultProxy(host, port) as proxy:`` — forwards 127.0.0.1:``proxy.port`` to
    ``host:port`` until the block ends (every connection is then reset)."""

    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stats = Stats()
        self.mode = PASS
        self._latency = 0.0
        self._drop_rate = 0.0
        self._stall = DEFAULT_STALL
        self._random = random.Random(seed)
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self.port = 0

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(self._listen())
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._close())
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- modes ------------------------------------------------------------------------

    def pass_through(self) -> None:
        self._set(PASS)

    def blackhole(self) -> None:
        """From now on nothing gets through, on any connection open now or made later;
        every connection open meanwhile stays dead after the heal."""
        self._set(BLACKHOLE)

    def latency(self, ms: float, drop_rate: float = 0.0, stall: tuple[float, float] = DEFAULT_STALL) -> None:
        """Every chunk ``ms`` late, each direction; ``drop_rate`` of them also stalled by a
        random ``stall`` (seconds), holding back what follows them."""
        if not 0 <= drop_rate <= 1:
            raise ValueError(f"drop_rate is a share between 0 and 1, not {drop_rate}")
        self._set(LATENCY, ms / 1000.0, drop_rate, stall)

    def reset(self) -> int:
        """RST every open connection (both sides); returns how many were open. The mode
        stays what it was."""
        return int(self._call(self._reset_all()))

    # --- the loop's side --------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    def _set(
        self, mode: str, latency: float = 0.0, drop: float = 0.0, stall: tuple[float, float] = DEFAULT_STALL
    ) -> None:
        def apply() -> None:
            self.mode, self._latency, self._drop_rate, self._stall = mode, latency, drop, stall
            if mode == BLACKHOLE:
                for link in self._links:
                    link.dead = True

        done = threading.Event()

        def apply_and_tell() -> None:
            apply()
            done.set()

        self._loop.call_soon_threadsafe(apply_and_tell)
        done.wait(timeout=10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._reset_all()
        await self._server.wait_closed()

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._drop(link, reset=True)
        self.stats.resets += len(links)
        return len(links)

    def _drop(self, link: _Link, *, reset: bool = False) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.stats.closed += 1
        for task in link.tasks:
            task.cancel()
        if reset:
            _rst(link.client)
            _rst(link.upstream)
        else:
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(writer, dead=self.mode == BLACKHOLE)
        self._links.add(link)
        if link.dead:  # accepted, and it carries nothing (no upstream connection at all)
            link.tasks.append(asyncio.ensure_future(self._swallow(link, reader)))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._drop(link, reset=True)
            return
        link.upstream = up_writer
        if link not in self._links:  # reset while connecting
            _rst(up_writer)
            return
        for source, target in ((reader, up_writer), (up_reader, writer)):
            link.tasks.append(asyncio.ensure_future(self._pump(link, source, target)))

    async def _swallow(self, link: _Link, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(CHUNK):
            self.stats.swallowed_bytes += len(data)
        self._drop(link)

    async def _pump(self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        """Read ``source``, hand each chunk to a writer that delivers it to ``target`` at its
        time (in order: a stalled chunk holds back the ones behind it, as in TCP)."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        writer_task = asyncio.ensure_future(self._deliver(link, queue, target))
        link.tasks.append(writer_task)
        due = 0.0
        try:
            while data := await source.read(CHUNK):
                self.stats.chunks += 1
                if link.dead or self.mode == BLACKHOLE:
                    link.dead = True
                    self.stats.swallowed_bytes += len(data)
                    continue
                now = time.monotonic()
                delay = 0.0
                if self.mode == LATENCY:
                    delay = self._latency
                    if self._drop_rate and self._random.random() < self._drop_rate:
                        self.stats.dropped += 1
                        delay += self._random.uniform(*self._stall)
                due = max(due, now + delay)
                await queue.put((due, data))
        except (ConnectionError, OSError):
            pass
        await queue.put(None)

    async def _deliver(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes] | None], target: asyncio.StreamWriter
    ) -> None:
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if link.dead:
                    self.stats.swallowed_bytes += len(data)
                    continue
                target.write(data)
                await target.drain()
                self.stats.forwarded_bytes += len(data)
        except (ConnectionError, OSError):
            pass
        # One side closed (or failed): close the whole link, as a proxy does. On a dead link
        # only the client's close counts: the upstream's never reaches it (the network is gone).
        if not link.dead or target is link.upstream:
            self._drop(link)
