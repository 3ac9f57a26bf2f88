"""Extensions: how they are named, loaded, wired into the subscription table and the
queues, and what the built-in sales analytics makes of the events (no broker here)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import MetaData, select

from app import analytics
from app.domain.events import Envelope, OrderCancelled, OrderCompleted, PaymentDeclined
from app.domain.subscriptions import MODES, subscriptions
from app.extensions import Extension, ExtensionError, NotSubscribed, load, load_all, with_extensions
from app.operations import eventgraph
from app.persistence.db import Database, make_engine
from app.persistence.tables import standard_tables
from config.celery import celery_config, dead_letter_queues
from config.settings import SERVICES, Settings
from tests.support import notifications

pytestmark = pytest.mark.timeout(30)

NOTIFICATIONS = "notifications=tests.support.notifications:extension"


# --- naming them --------------------------------------------------------------------------


def test_extensions_are_named_in_one_setting() -> None:
    settings = Settings(extensions=f"analytics, {NOTIFICATIONS}")
    assert settings.extension_targets == {
        "analytics": "app.analytics:extension",
        "notifications": "tests.support.notifications:extension",
    }
    assert settings.queues == (*SERVICES, "analytics", "notifications")
    assert Settings().queues == SERVICES


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("reports", "no built-in extension 'reports' (built in: analytics)"),
        ("payment", "'payment' is a service of the saga"),
        ("analytics,analytics", "'analytics' is named twice"),
        ("Sales", "'Sales' is not an extension name"),
        ("mail=not a target", "give the extension as name=package.module:attribute"),
    ],
)
def test_a_wrong_extension_setting_says_what_to_write(value: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(extensions=value)
    assert says in str(caught.value)


def test_loading_an_extension_checks_what_the_target_names() -> None:
    assert load("analytics", "app.analytics:extension") is analytics.extension
    with pytest.raises(ExtensionError, match="cannot import no_such_module"):
        load("mail", "no_such_module:extension")
    with pytest.raises(ExtensionError, match="is MetaData, not an app.extensions.Extension"):
        load("notifications", "tests.support.notifications:metadata")
    with pytest.raises(ExtensionError, match="is named 'notifications'; name it as its definition does"):
        load("mail", "tests.support.notifications:extension")


def test_an_extension_is_checked_when_it_is_defined() -> None:
    metadata = MetaData()
    tables = standard_tables("mail", metadata)
    with pytest.raises(ExtensionError, match="unknown event type"):
        Extension("mail", metadata, tables, {"OrderShipped": lambda uow, env: None})
    with pytest.raises(ExtensionError, match="subscribes to no event type"):
        Extension("mail", metadata, tables, {})
    foreign = MetaData()
    standard_tables("other", foreign)
    with pytest.raises(ExtensionError, match="must be named mail_"):
        Extension("mail", foreign, tables, {"OrderCompleted": lambda uow, env: None})


# --- wiring them in --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_extension_adds_its_task_and_changes_nothing_else(mode: str) -> None:
    table = subscriptions(mode)
    before = {event: tuple(tasks) for event, tasks in table.items()}
    extensions = load_all(Settings(extensions=f"analytics,{NOTIFICATIONS}").extension_targets).values()
    merged = with_extensions(table, extensions)
    assert table == before  # the services' own table is untouched
    assert set(merged) == set(before)
    for event, tasks in merged.items():
        added = ("analytics.handle", "notifications.handle") if event in {"OrderCompleted", "OrderCancelled"} else ()
        assert tasks == (*before[event], *added), event


def test_each_extension_gets_its_queue_route_and_dead_letter_queue() -> None:
    settings = Settings(
        broker_url="amqp://guest:guest@127.0.0.1:5672//", database_url="sqlite://", extensions="analytics"
    )
    conf = celery_config(settings)
    queues = {q.name: q for q in conf["task_queues"]}
    assert list(queues) == [*SERVICES, "analytics"]
    assert queues["analytics"].routing_key == "analytics.#"
    assert queues["analytics"].queue_arguments["x-dead-letter-routing-key"] == "analytics.dlq"
    assert conf["task_routes"]["analytics.*"] == {"queue": "analytics", "routing_key": "analytics.task"}
    assert [q.name for q in dead_letter_queues(names=settings.queues)][-1] == "analytics.dlq"


@pytest.mark.parametrize("mode", MODES)
def test_the_event_graph_shows_an_extension_and_still_checks_clean(mode: str) -> None:
    found = eventgraph.edges(mode, extensions=[analytics.extension])
    delivered = {(e.source, e.target) for e in found if e.kind == "delivered to"}
    assert {("OrderCompleted", "analytics.handle"), ("OrderCancelled", "analytics.handle")} <= delivered
    assert not [e for e in found if e.source == "analytics.handle"]  # it emits nothing
    assert eventgraph.problems(mode, extensions=[analytics.extension]) == []
    chart = eventgraph.mermaid(mode, extensions=[analytics.extension])
    assert '["analytics.handle"]' in chart and "class " in chart.split("classDef extension", 1)[1]
    assert "analytics" not in eventgraph.mermaid(mode)


# --- what an extension does with events ------------------------------------------------------


@pytest.fixture
def analytics_db(tmp_path: Path) -> Database:
    engine = make_engine(f"sqlite:///{tmp_path / 'analytics.db'}")
    db = Database("analytics", engine, analytics.metadata, analytics.tables, migrated=True)
    db.create_schema()
    return db


def completed(order_id: str, cents: int, currency: str = "EUR", day: int = 26) -> Envelope:
    return Envelope.wrap(
        OrderCompleted(order_id=order_id, total_cents=cents, currency=currency),
        occurred_at=datetime(2026, 11, day, 23, 59, tzinfo=UTC),
    )


def cancelled(order_id: str, reason: str, day: int = 26) -> Envelope:
    return Envelope.wrap(
        OrderCancelled(order_id=order_id, reason=reason), occurred_at=datetime(2026, 11, day, 0, 1, tzinfo=UTC)
    )


def test_analytics_sums_up_each_day_once_per_event(analytics_db: Database) -> None:
    ext = analytics.extension
    events = [
        completed("o1", 4599, day=25),
        completed("o2", 1000, day=26),
        completed("o3", 250, "USD", day=26),
        cancelled("o4", "card_declined", day=26),
        cancelled("o5", "card_declined", day=26),
        cancelled("o6", "out_of_stock", day=26),
    ]
    assert [ext.receive(analytics_db, env) for env in events] == [True] * 6
    assert [ext.receive(analytics_db, env) for env in events] == [False] * 6  # delivered again: absorbed
    days = analytics.sales_by_day(analytics_db)
    assert [(d.day, d.completed, d.cancelled) for d in days] == [("2026-11-25", 1, 0), ("2026-11-26", 2, 3)]
    assert days[0].revenue_cents == Counter({"EUR": 4599})
    assert days[1].revenue_cents == Counter({"EUR": 1000, "USD": 250})
    assert days[1].reasons == Counter({"card_declined": 2, "out_of_stock": 1})
    assert [d.day for d in analytics.sales_by_day(analytics_db, since=date(2026, 11, 26))] == ["2026-11-26"]


def test_an_order_ends_once_in_analytics(analytics_db: Database) -> None:
    ext = analytics.extension
    assert ext.receive(analytics_db, completed("o1", 500))
    assert ext.receive(analytics_db, cancelled("o1", "deadline_exceeded"))  # a new event, but a second end
    rows = analytics_db.query(lambda c: c.execute(select(analytics.ended)).all())
    assert [(r.order_id, r.outcome, r.total_cents) for r in rows] == [("o1", "completed", 500)]


def test_an_event_the_extension_does_not_take_is_refused(analytics_db: Database) -> None:
    declined = Envelope.wrap(PaymentDeclined(order_id="o1", reason="card_declined"))
    with pytest.raises(NotSubscribed, match="analytics does not subscribe to PaymentDeclined"):
        analytics.extension.receive(analytics_db, declined)
    assert analytics.sales_by_day(analytics_db) == []


def test_an_extension_without_migrations_gets_its_tables_where_missing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    db = Database("notifications", engine, notifications.metadata, notifications.tables, migrated=False)
    db.create_schema()
    db.create_schema()  # again: nothing to do
    assert notifications.extension.receive(db, completed("o1", 100))
    assert notifications.sent(db) == {"o1": ["completed"]}
