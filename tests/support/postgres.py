"""A private PostgreSQL server for tests that stop and start it: its own data directory
under /tmp, its own port, trust authentication, removed on exit. The machine's shared
PostgreSQL is never touched.

``initdb`` refuses to run as root, so as root every server command runs as the
``postgres`` user (``runuser``), in a directory that user owns.

pytest-free.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import ClusterError, free_port, poll_until

BIN = Path(os.environ.get("SAGA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 60.0


@dataclass
class PrivatePostgres:
    """A running private server: ``url(db)`` names one of its databases."""

    data: Path
    socket_dir: Path
    port: int
    run_as: str | None  # the user the server runs as, when not this one

    def _cmd(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else list(argv)

    def pg_ctl(self, *args: str) -> None:
        done = subprocess.run(
            self._cmd(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), *args),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
        )
        if done.returncode != 0:
            raise ClusterError(f"pg_ctl {' '.join(args)} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-w", "-t", str(int(START_TIMEOUT)), "-o", options, "start")
        poll_until(self.answers, timeout=START_TIMEOUT, interval=0.1, what="the private PostgreSQL to answer")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast``: every client is disconnected, every open transaction
        rolled back."""
        self.pg_ctl("-w", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """initdb a fresh cluster, start it on a free port; stop it and remove it on exit."""
    run_as = "postgres" if getpass.getuser() == "root" else None
    root = Path(tempfile.mkdtemp(prefix="checkout-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if run_as:
        shutil.chown(root, run_as)
        shutil.chown(sockets, run_as)
    server = PrivatePostgres(data, sockets, free_port(), run_as)
    try:
        done = subprocess.run(
            server._cmd(str(BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise ClusterError(f"initdb failed: {done.stderr or done.stdout}")
        server.start()
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            try:
                server.stop("immediate")
            except ClusterError:
                pass
        shutil.rmtree(root, ignore_errors=True)
