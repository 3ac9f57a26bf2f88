"""The composition root wires everything, and nothing looks it up: no runtime hung on the
Celery app, no import loop through ``app.bootstrap``, no Celery in the business logic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

from app.bootstrap import Runtime
from app.messaging.consumer import UNBOUND, CheckoutConsumer
from config.settings import Settings


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("app", "config", "workers", include_external_packages=True)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(Settings(data_dir=tmp_path, max_message_bytes=4096, extensions="analytics"))
    yield runtime
    runtime.close()


def test_nothing_the_composition_root_imports_imports_it_back(graph: grimp.ImportGraph) -> None:
    upstream = graph.find_upstream_modules("app.bootstrap")
    loops = sorted(m for m in upstream if m.startswith("app.") and graph.chain_exists(m, "app.bootstrap"))
    assert loops == []
    assert "app.operations.sweeper" in upstream and "app.messaging.tasks" in upstream  # (what did loop)


@pytest.mark.parametrize("layer", ["app.domain", "app.persistence", "app.services"])
def test_business_logic_imports_no_celery_kombu_or_messaging(graph: grimp.ImportGraph, layer: str) -> None:
    for forbidden in ("celery", "kombu", "app.messaging"):
        chains = graph.find_shortest_chains(importer=layer, imported=forbidden, as_packages=True)
        assert chains == set(), (layer, forbidden, chains)


def test_the_consumer_gets_what_it_needs_with_its_class_not_from_the_app(rt: Runtime) -> None:
    assert not hasattr(rt.celery, "checkout_runtime")
    consumer = rt.celery.conf.worker_consumer
    assert issubclass(consumer, CheckoutConsumer) and consumer is not CheckoutConsumer
    context = consumer.context
    assert context.dead_letters is rt.dead_letters
    assert context.services == ("order", "inventory", "payment", "shipping", "analytics")
    assert (context.max_message_bytes, context.signing) == (4096, False)
    # each app of the system gets its own, and the class named in the configuration none
    assert rt.make_celery("second").conf.worker_consumer is not consumer
    assert CheckoutConsumer.context is UNBOUND


def test_each_app_s_tasks_dispatch_through_that_app(rt: Runtime) -> None:
    other = rt.make_celery("other")
    assert rt.collaborators(other).coordinator.dispatcher.app is other  # type: ignore[attr-defined]
    assert rt.coordinator_for(rt.celery).dispatcher.app is rt.celery  # type: ignore[attr-defined]
