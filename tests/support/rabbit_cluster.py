"""A RabbitMQ cluster of three nodes on this machine, of its own, started and removed by the tests.

The shared RabbitMQ (``rabbit@localhost``, AMQP 5672) is never touched. Each node of this
cluster has its own name (``rabbit-c1-<hex>@localhost`` ...), its own AMQP and distribution
ports (free ones, picked at start), its own data, log and config files and its own
enabled-plugins file (an empty list: no management or Prometheus listener), all under one
temporary directory. The nodes and their CLI share an Erlang cookie of their own, kept in
that directory's ``.erlang.cookie`` (``HOME`` points there): the cluster's CLI cannot reach
the shared node, nor the shared node's CLI this cluster.

Nodes 2 and 3 are joined to node 1 with ``rabbitmqctl stop_app; reset; join_cluster;
start_app``. A node can be stopped (``stop_app``: the Erlang VM stays, AMQP goes) or
killed (SIGKILL of its process group: the VM and its children go at once), and brought
back. :func:`rabbit_cluster` is the pytest fixture (module scope: three Erlang VMs are not
kept idle through the rest of a suite); :class:`RabbitCluster` works without pytest.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import ClusterError, free_port, poll_until, unique_name

#: Where the Debian package keeps the real scripts (/usr/sbin/rabbitmqctl is a wrapper that
#: runs them as the rabbitmq user with that user's cookie, the shared node's).
RABBITMQ_BIN = Path(os.environ.get("SAGA_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
NODE_START_TIMEOUT = 120.0
CLI_TIMEOUT = 60.0
NODES = 3
HOST = "localhost"  # the short host name the shared node also uses (rabbit@localhost)


@dataclass
class Node:
    """One node: its name, its ports, its files and (while running) its process."""

    name: str  # e.g. rabbit-c1-1a2b3c@localhost
    amqp_port: int
    dist_port: int
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, vhost: str, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.amqp_port}/{vhost}"


@dataclass
class RabbitCluster:
    """Three nodes joined as one cluster under ``root``; ``with RabbitCluster(root) as c``."""

    root: Path
    size: int = NODES
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise ClusterError(f"no rabbitmq-server in {RABBITMQ_BIN} (set SAGA_TEST_RABBITMQ_BIN)")
        tag = unique_name("c")[2:8]
        for n in range(1, self.size + 1):
            base = self.root / f"c{n}"
            self.nodes.append(Node(f"rabbit-c{n}-{tag}@{HOST}", free_port(), free_port(), base))

    # --- the environment of a node and of its CLI -----------------------------------------

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env["HOME"] = str(self.root)  # the cookie: root/.erlang.cookie
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        return env

    def node_env(self, node: Node) -> dict[str, str]:
        env = self.cli_env()
        env.update(
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_CONF_ENV_FILE=str(node.base / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            RABBITMQ_CONFIG_FILE=str(node.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(node.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.base / "log"),
            RABBITMQ_PID_FILE=str(node.base / "node.pid"),
        )
        return env

    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        for node in self.nodes:
            node.base.mkdir(parents=True, exist_ok=True)
            (node.base / "rabbitmq-env.conf").write_text("")
            (node.base / "advanced.config").write_text("[].\n")
            (node.base / "enabled_plugins").write_text("[].\n")
            (node.base / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                # a stopped member is noticed at once (its connections close), a killed one
                # when its distribution link drops; a paused one after the tick time
                "net_ticktime = 10\n"
                "log.console = false\n"
                "log.file.level = info\n"
            )

    # --- the CLI ---------------------------------------------------------------------------

    def ctl(self, node: Node, *args: str, tool: str = "rabbitmqctl", timeout: float = CLI_TIMEOUT) -> str:
        """``<tool> -q -n <node> args...`` with the cluster's cookie; raises on failure."""
        argv = [str(RABBITMQ_BIN / tool), "-q", "-n", node.name, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.cli_env())
        if done.returncode != 0:
            raise ClusterError(f"{tool} -n {node.name} {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr or done.stdout}")  # fmt: skip
        return done.stdout

    def any_up(self) -> Node:
        """The first node whose application answers."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            try:
                self.ctl(node, "await_startup", "--timeout", "2", timeout=20)
            except (ClusterError, subprocess.TimeoutExpired):
                continue
            return node
        raise ClusterError("no node of the cluster is running")

    def running_nodes(self) -> set[str]:
        """The nodes the cluster counts as running (``cluster_status``, asked of a live node)."""
        status = json.loads(self.ctl(self.any_up(), "cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def by_name(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    # --- starting, joining, stopping -------------------------------------------------------

    def start_node(self, node: Node, timeout: float = NODE_START_TIMEOUT) -> None:
        """Start the node's server (it rejoins its cluster on its own when it was in one) and
        wait until its application is up."""
        self.spawn(node)
        self.wait_started(node, timeout)

    def spawn(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            raise ClusterError(f"{node.name} is already running (pid {node.proc.pid})")
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                cwd=node.base,
                env=self.node_env(node),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the VM and its helpers in one group, killed together
            )

    def wait_started(self, node: Node, timeout: float = NODE_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout

        def started() -> bool:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise ClusterError(f"{node.name} exited ({node.proc.returncode}):\n{self.tail(node)}")
            try:
                self.ctl(node, "await_startup", "--timeout", "5", timeout=30)
            except (ClusterError, subprocess.TimeoutExpired):
                return False
            return True

        poll_until(started, timeout=max(1.0, deadline - time.monotonic()), interval=0.5,
                   what=f"{node.name} to start", diagnostics=lambda: self.tail(node))  # fmt: skip

    def start(self) -> None:
        """Start every node, join 2..n to node 1, and wait until all count as running."""
        self._write_files()
        for node in self.nodes:  # all at once: each takes seconds to boot
            self.spawn(node)
        for node in self.nodes:
            self.wait_started(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "reset")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        self.wait_running({node.name for node in self.nodes})

    def wait_running(self, names: set[str], timeout: float = NODE_START_TIMEOUT) -> None:
        poll_until(lambda: self.running_nodes() == names, timeout=timeout, interval=0.5,
                   what=f"the cluster to run exactly {sorted(names)}",
                   diagnostics=lambda: f"running: {sorted(self.running_nodes())}")  # fmt: skip

    def stop_app(self, node: Node) -> None:
        """``rabbitmqctl stop_app``: the node closes every AMQP connection, its queue replicas stop."""
        self.ctl(node, "stop_app")

    def start_app(self, node: Node) -> None:
        self.ctl(node, "start_app")
        self.ctl(node, "await_startup", "--timeout", str(int(NODE_START_TIMEOUT)), timeout=NODE_START_TIMEOUT + 10)

    def kill(self, node: Node, timeout: float = 30.0) -> None:
        """SIGKILL the node's whole process group, as a crash of its host would, and wait for it."""
        assert node.proc is not None
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every node at once (SIGTERM: RabbitMQ shuts down cleanly), then SIGKILL
        whatever of their process groups is left."""
        running = [node.proc for node in self.nodes if node.proc is not None and node.proc.poll() is None]
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            node.proc.wait(timeout=10)

    def tail(self, node: Node, lines: int = 30) -> str:
        parts = []
        for path in [node.log, *sorted((node.base / "log").glob("*.log"))]:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"----- {path} -----")
            parts.extend(text)
        return "\n".join(parts)

    def __enter__(self) -> RabbitCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
        left = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        if left or self.root.exists():
            raise ClusterError(f"cluster not removed: running {left}, {self.root} exists: {self.root.exists()}")

    # --- vhosts and queues -----------------------------------------------------------------

    def url(self, vhost: str) -> str:
        """kombu's failover form: every node's URL, ``;``-separated, node 1 first."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def add_vhost(self, vhost: str) -> None:
        node = self.any_up()
        self.ctl(node, "add_vhost", vhost)
        self.ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        self.ctl(self.any_up(), "delete_vhost", vhost)

    def quorum_queues(self, vhost: str) -> dict[str, dict[str, Any]]:
        """Queue name -> {"type", "leader", "members", "online"} in ``vhost``."""
        out = self.ctl(self.any_up(), "list_queues", "-p", vhost, "name", "type", "leader", "members", "online",
                       "--formatter", "json")  # fmt: skip
        return {q["name"]: q for q in json.loads(out)}

    def connections(self, vhost: str) -> dict[str, int]:
        """Node name -> client connections to ``vhost`` it holds (by the AMQP port they reached)."""
        out = self.ctl(self.any_up(), "list_connections", "vhost", "port", "--formatter", "json")
        names = {node.amqp_port: node.name for node in self.nodes}
        found: dict[str, int] = {}
        for conn in json.loads(out):
            if conn["vhost"] == vhost:
                name = names.get(int(conn["port"]), str(conn["port"]))
                found[name] = found.get(name, 0) + 1
        return found


@pytest.fixture(scope="module")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three RabbitMQ nodes joined as one cluster, for a module's tests; every node stopped
    and every file removed at the end, whatever happened."""
    root = tmp_path_factory.mktemp("rabbit-cluster")
    with RabbitCluster(root) as cluster:
        yield cluster
