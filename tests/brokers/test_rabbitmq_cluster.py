"""A RabbitMQ cluster losing a node: three nodes of the test's own on this machine
(tests/support/rabbit_cluster.py), quorum queues replicated on all three, the four service
workers and ``celery beat`` as separate processes, PostgreSQL.

Every process is given the cluster as kombu's failover list (``amqp://…c1;amqp://…c2;
amqp://…c3``, each with the test's vhost), so each connects to node 1 first and moves on to
the next node when its node goes. Quorum queues are led by the node their declaring client
was connected to (RabbitMQ's ``client-local`` leader locator), so node 1 leads the payment
queue and holds every client's connection: losing it loses the leader and every connection
at once.

Orders flow at a multiple of the capacity measured in the same test (the machinery of
tests/brokers/test_faults.py). A third of the way through, the node that leads the payment
queue goes: SIGKILLed with its whole process group (choreography), or, under ``make soak``
also, with ``rabbitmqctl stop_app`` (orchestration). The two nodes left elect a new leader; the publishers (this
process's placements and relay, every worker's next steps, beat's sweeps) and the workers'
consumers reconnect to them. Every order still ends as its input predicts, the auditor is
clean, the gateway's ledger shows no capture or refund twice, no dead letter is left, no
process died; the test prints the recovery time. Then the node is brought back, and the
payment queue has its three replicas online again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.api import System
from config.settings import SERVICES
from tests.brokers.test_faults import (
    FAULT_LOAD,
    FAULT_SETTINGS,
    FAULT_VOCABULARY,
    Findings,
    StartRun,
    connection_losses,
    settle_and_check,
    start_run,  # noqa: F401  (the fixture)
)
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, log_text, unique_name
from tests.support.load import soak_seconds
from tests.support.rabbit_cluster import Node, RabbitCluster

#: How the leader goes, per saga mode: the whole node killed (connections reset, no
#: goodbye), or its application stopped (connections closed by the broker, replicas
#: stopped). A normal run kills it under choreography; ``make soak`` (SOAK_SECONDS) also
#: stops it under orchestration: each run costs about two minutes on this machine.
LOSSES = {"choreography": "kill", "orchestration": "stop_app"}
RUNS = list(LOSSES) if soak_seconds() else ["choreography"]

#: Celery's consumer logs where it connected: "Connected to amqp://guest:**@127.0.0.1:PORT/vhost".
CONNECTED = re.compile(r"Connected to amqp://[^@\s]*@127\.0\.0\.1:(\d+)/")
FAILOVER_TIMEOUT = 90.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**FAULT_SETTINGS, "rabbitmq_queue_type": "quorum"}


@pytest.fixture
def broker(rabbit_cluster: RabbitCluster) -> Iterator[BrokerNamespace]:
    """A fresh vhost on the cluster, reached through every node (kombu's failover list)."""
    vhost = unique_name()
    rabbit_cluster.add_vhost(vhost)
    try:
        yield BrokerNamespace("rabbitmq", rabbit_cluster.url(vhost), "", vhost=vhost)
    finally:
        rabbit_cluster.delete_vhost(vhost)


@pytest.fixture
def full_cluster(rabbit_cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    """Whatever the test did, every node runs again before the next test (torn down after
    the workers, before the vhost goes)."""
    yield rabbit_cluster
    for node in rabbit_cluster.nodes:
        bring_back(rabbit_cluster, node)
    rabbit_cluster.wait_running({node.name for node in rabbit_cluster.nodes})


def bring_back(cluster: RabbitCluster, node: Node) -> None:
    """Start a killed node again, or the application of a stopped one; no-op when it runs."""
    if node.proc is None or node.proc.poll() is not None:
        cluster.start_node(node)
    elif node.name not in cluster.running_nodes():
        cluster.start_app(node)


def connected_ports(workers: Workers) -> dict[str, list[int]]:
    """Per worker: the AMQP port of each node its consumer connected to, in order."""
    return {
        name: [int(port) for port in CONNECTED.findall(log_text(log))]
        for name, log in workers.logs.items()
        if name not in workers.schedulers
    }


def wait_new_leader(cluster: RabbitCluster, vhost: str, queue: str, old: str) -> str:
    def elected() -> str:
        leader = str(cluster.quorum_queues(vhost)[queue].get("leader") or "")
        return leader if leader and leader != old else ""

    return wait_until(elected, timeout=FAILOVER_TIMEOUT, interval=0.2, what=f"a new leader of {queue}")


@pytest.mark.brokers
@pytest.mark.timeout(300 + 3 * soak_seconds())
@pytest.mark.parametrize("saga_mode", RUNS)
def test_losing_the_payment_queue_leader_mid_run_loses_no_order(
    full_cluster: RabbitCluster,
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    start_run: StartRun,  # noqa: F811  (the fixture imported above)
    record_property: Any,
    saga_mode: str,
) -> None:
    cluster, vhost = full_cluster, broker.vhost
    assert vhost is not None
    everyone = {node.name for node in cluster.nodes}
    queues = cluster.quorum_queues(vhost)
    for service in SERVICES:
        q = queues[service]
        assert (q["type"], set(q["members"]), set(q["online"])) == ("quorum", everyone, everyone), q

    loss = LOSSES[saga_mode]
    run = start_run(FAULT_VOCABULARY, f"cluster-{saga_mode}", FAULT_LOAD)
    findings = Findings(f"rabbitmq cluster: payment queue leader lost ({loss}), 3 nodes, quorum queues, {saga_mode}")
    run.wait_terminal_at_least(len(run.placer.plan) // 3)

    leader = cluster.by_name(str(cluster.quorum_queues(vhost)["payment"]["leader"]))
    held = cluster.connections(vhost)
    # every process reached node 1 first, which leads the queues it declared: losing the
    # leader is losing every client's node too, so both the queue and the clients fail over
    assert held.get(leader.name, 0) >= len(workers.procs), f"leader {leader.name}; connections per node {held}"
    survivors = {node.amqp_port for node in cluster.nodes if node is not leader}
    before = connection_losses(workers)
    failures_before = len(run.placer.failures)
    fault = run.fault()
    if loss == "stop_app":
        cluster.stop_app(leader)
    else:
        cluster.kill(leader)
    new_leader = wait_new_leader(cluster, vhost, "payment", leader.name)
    findings.extra["payment queue leader"] = f"{leader.name} -> {new_leader} in {time.monotonic() - fault.at:.1f}s"

    service_workers = [name for name in workers.logs if name not in workers.schedulers]

    def failed_over() -> bool:
        lost = connection_losses(workers)
        ports = connected_ports(workers)
        return all(lost[w] > before[w] and ports[w] and ports[w][-1] in survivors for w in service_workers)

    wait_until(
        failed_over,
        timeout=FAILOVER_TIMEOUT,
        interval=0.2,
        what="every service worker to reconnect to a node that is left",
        diagnostics=lambda: f"losses {connection_losses(workers)} (before {before}); ports {connected_ports(workers)} "
        f"(left: {sorted(survivors)})\n{workers.tails()}",
    )
    findings.extra["workers reconnected"] = f"{time.monotonic() - fault.at:.1f}s after the loss"
    findings.extra["client connections on the lost node at the loss"] = held.get(leader.name, 0)

    def back(findings: Findings) -> None:
        failed = len(run.placer.failures) - failures_before
        findings.extra["placement attempts failed after the loss (retried)"] = failed
        findings.extra["connections per node after the loss"] = cluster.connections(vhost)
        began = time.monotonic()
        bring_back(cluster, leader)
        cluster.wait_running(everyone)
        wait_until(
            lambda: set(cluster.quorum_queues(vhost)["payment"]["online"]) == everyone,
            timeout=FAILOVER_TIMEOUT,
            interval=0.5,
            what="the payment queue's three replicas online again",
        )
        took = time.monotonic() - began
        findings.extra["node back"] = f"{leader.name} running, payment 3/3 replicas online, {took:.1f}s"

    settle_and_check(run, findings, fault, record_property, back)
