"""Property-based tests (hypothesis): whatever arrives at an edge, nothing crashes.

* ``validate_order`` with any JSON-ish input (text, huge and negative ints, floats, nested
  lists and objects, bytes, unicode) returns a ``PlaceOrder`` or raises ``InvalidOrder``
  with a short message naming the field — never another exception;
* ``place_order`` on the embedded system: an order id, or ``InvalidOrder`` and nothing
  written;
* every event type's parser (``app.domain.events.REGISTRY``) and the envelope: a model or a
  pydantic ``ValidationError``; an envelope that parses opens to its event, or says why not;
* every task's parse path (run eagerly): it ran (or the service turned the command down),
  or the message became a dead letter;
* the worker's consumer, handed any bytes under any headers and content type: the
  message goes on to the pool, or it is rejected (never requeued) as a dead letter.

Run with ``--hypothesis-show-statistics`` to see how many examples each property tried.
"""

from __future__ import annotations

import json
import os
import string
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Reject
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import func, select

import app.api as api
from app.bootstrap import Runtime
from app.domain.catalog import CATALOG
from app.domain.commands import PlaceOrder
from app.domain.errors import BusinessFailure, InvalidOrder, StepFailed
from app.domain.events import REGISTRY, Envelope, Event, UnreadableEvent
from app.services.order import orders
from config.settings import Settings
from tests.conftest import purge_memory_broker
from tests.support.consumer import ConsumerProbe

#: Shared by every property: a deadline per example, no example database in the work tree;
#: the same examples on every CI run (CI=true), new ones on every run elsewhere.
PROPERTY = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _huge(exponent: int) -> int:
    return int(10**exponent) if exponent >= 0 else -int(10 ** (-exponent))


#: Integers past every bound, up to far more digits than int() will print (built lazily:
#: hypothesis prints its strategies, and such an int has no repr).
HUGE = st.sampled_from([5000, -5000, 4299, 19, -19, 10]).map(_huge) | st.sampled_from([63, 64, 31]).map(lambda b: 2**b)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | HUGE
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
    | st.text(min_size=60, max_size=400)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
#: Python values a caller of the Python API might pass that JSON has not: tuples, bytes, sets.
python_values = json_values | st.binary(max_size=40) | st.tuples(json_values) | st.frozensets(st.integers(), max_size=3)

SKUS = [p.sku for p in CATALOG]
sku = st.sampled_from(SKUS) | st.text(max_size=40)
qty = st.integers(min_value=-5, max_value=1005) | HUGE | json_values
line = st.fixed_dictionaries({"sku": sku, "qty": qty}) | st.fixed_dictionaries(
    {"sku": sku, "qty": qty}, optional={"extra": json_values}
)
items = st.lists(line, min_size=0, max_size=102) | python_values
ADDRESS_FIELDS = ("name", "line1", "city", "postal_code", "country")
address = (
    st.fixed_dictionaries(
        {"country": st.sampled_from(["GB", "FR", "AQ", "gb", "XX", ""]) | st.text(max_size=4)},
        optional={f: st.text(max_size=250) | json_values for f in ADDRESS_FIELDS[:4]},
    )
    | st.none()
    | python_values
)
order_args = st.fixed_dictionaries(
    {
        "customer_id": st.text(alphabet=string.ascii_letters + string.digits + "_.:@-", max_size=70) | python_values,
        "items": items,
    },
    optional={
        "payment_token": st.sampled_from(["tok_ok", "tok_declined", "tok_flaky", "tok_"]) | python_values,
        "ship_to": address,
        "idempotency_key": st.text(max_size=140) | python_values,
        "currency": st.sampled_from(["EUR", "USD", "eur", "EURO"]) | python_values,
    },
)


def safe_repr(value: Any) -> str:
    """repr, or a note where it cannot be made (an int of thousands of digits)."""
    try:
        return repr(value)[:500]
    except ValueError as exc:
        return f"<unprintable {type(value).__name__}: {exc}>"


def short_and_named(exc: InvalidOrder) -> None:
    """An InvalidOrder says which field, briefly, whatever the input was."""
    message = str(exc)
    assert len(message) < 400, message[:200]
    assert exc.field and message.startswith(exc.field), message


# --- the API ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
@PROPERTY
@given(order_args)
def test_validate_order_returns_an_order_or_raises_invalid_order(args: dict[str, Any]) -> None:
    try:
        order = api.validate_order(**args)
    except InvalidOrder as exc:
        short_and_named(exc)
    else:
        assert isinstance(order, PlaceOrder)
        assert len(order.model_dump_json()) < 16 * 1024  # every field is bounded, so the order is


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[api.System]:
    """The Python API's own embedded system (``place_order`` uses the process's), over a
    fresh SQLite file."""
    purge_memory_broker()
    api.stop()
    system = api.start(Settings(data_dir=tmp_path_factory.mktemp("properties")))
    yield system
    api.stop()
    purge_memory_broker()


def orders_written(system: api.System) -> int:
    db = system.runtime.databases["order"]
    count: int = db.query(lambda c: c.execute(select(func.count()).select_from(orders)).scalar_one())
    return count


@pytest.mark.timeout(240)
@settings(PROPERTY, max_examples=60)
@given(order_args)
def test_place_order_returns_an_id_or_raises_invalid_order_and_writes_nothing(
    embedded: api.System, args: dict[str, Any]
) -> None:
    before = orders_written(embedded)
    try:
        order_id = api.place_order(**args)
    except InvalidOrder as exc:
        short_and_named(exc)
        assert orders_written(embedded) == before, "an invalid order was written"
    else:
        assert isinstance(order_id, str) and api.get_order(order_id).order_id == order_id


@pytest.mark.timeout(120)
def test_place_order_examples_that_must_pass_and_fail(embedded: api.System) -> None:
    biggest = [{"sku": "MUG-01", "qty": 1} for _ in range(100)]
    address = {"name": "N" * 100, "line1": "L" * 200, "city": "C" * 100, "postal_code": "P" * 20, "country": "FR"}
    order_id = api.place_order("c" * 64, biggest, ship_to=address, idempotency_key="k" * 128)
    assert api.wait_for_order(order_id, timeout=60).status == "COMPLETED"
    for bad in (
        {"customer_id": "c", "items": biggest + [{"sku": "MUG-01", "qty": 1}]},
        {"customer_id": "c", "items": [{"sku": "MUG-01", "qty": 10**5000}]},
        {"customer_id": "c", "items": [{"sku": "NOPE-01", "qty": 1}]},
        {"customer_id": "c" * 65, "items": [{"sku": "MUG-01", "qty": 1}]},
        {"customer_id": "c", "items": [{"sku": "MUG-01", "qty": 1}], "ship_to": {**address, "name": "N" * 101}},
    ):
        with pytest.raises(InvalidOrder):
            api.place_order(**bad)


# --- events ----------------------------------------------------------------------------


def payload_for(model: type[Event]) -> st.SearchStrategy[Any]:
    """Objects with the model's field names (and sometimes more) holding anything — most
    invalid, some valid — or any JSON value at all."""
    names = list(model.model_fields)
    near_values = {
        "order_id": st.text(min_size=1, max_size=70) | json_values,
        "lines": st.lists(line, max_size=4) | json_values,
        "ship_to": address,
        "currency": st.sampled_from(["EUR", "usd"]) | json_values,
    }
    fields = {name: near_values.get(name, json_values) for name in names}
    return (
        st.fixed_dictionaries({}, optional=fields)
        | st.fixed_dictionaries(fields, optional={"unexpected": json_values})
        | json_values
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("event_type", sorted(REGISTRY))
@settings(PROPERTY, max_examples=200)
@given(data=st.data())
def test_every_event_parser_returns_the_event_or_a_validation_error(event_type: str, data: st.DataObject) -> None:
    model = REGISTRY[event_type]
    payload = data.draw(payload_for(model))
    try:
        event = model.model_validate(payload)
    except ValidationError:
        return
    assert isinstance(event, model)
    json.dumps(event.model_dump(mode="json"))  # what parsed can be put back on the wire


envelope_fields = {
    "event_id": st.uuids().map(str) | json_values,
    "event_type": st.sampled_from(sorted(REGISTRY)) | json_values,
    "version": st.integers(min_value=-1, max_value=3) | json_values,
    "topic": st.sampled_from(sorted(e.TOPIC for e in REGISTRY.values())) | json_values,
    "occurred_at": st.datetimes().map(lambda d: d.isoformat()) | json_values,
    "key": st.text(min_size=1, max_size=70) | json_values,
    "correlation_id": st.text(min_size=1, max_size=70) | json_values,
    "causation_id": st.none() | json_values,
    "payload": st.dictionaries(st.text(max_size=10), json_values) | json_values,
    "attempts": json_values,
    "duration_ms": json_values,
}
envelopes = st.fixed_dictionaries({}, optional=envelope_fields) | json_values


@pytest.mark.timeout(120)
@PROPERTY
@given(envelopes)
def test_an_envelope_parses_and_opens_or_says_why_not(body: Any) -> None:
    try:
        env = Envelope.model_validate(body)
    except ValidationError:
        return
    try:
        event = env.open()
    except (UnreadableEvent, ValidationError):
        return
    assert isinstance(event, REGISTRY[env.event_type])


# --- the tasks' parse path -------------------------------------------------------------


@pytest.fixture(scope="module")
def eager_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    purge_memory_broker()
    rt = Runtime(Settings(data_dir=tmp_path_factory.mktemp("tasks"), retry_max=0))
    rt.prepare()
    yield rt
    rt.close()
    purge_memory_broker()


def service_tasks(rt: Runtime) -> list[str]:
    """Every task that takes a message (``<service>.<verb>``, one argument)."""
    services = set(rt.databases)
    return sorted(name for name in rt.celery.tasks if name.split(".", 1)[0] in services and name != "order.sweep")


def task_bodies(rt: Runtime) -> st.SearchStrategy[tuple[str, Any]]:
    bodies = (
        json_values
        | envelopes
        | st.fixed_dictionaries({"order_id": st.text(max_size=70) | json_values}, optional={"x": json_values})
    )
    return st.tuples(st.sampled_from(service_tasks(rt)), bodies)


@pytest.mark.timeout(240)
@settings(PROPERTY, max_examples=300)
@given(data=st.data())
def test_every_task_runs_or_dead_letters_what_it_cannot_parse(eager_runtime: Runtime, data: st.DataObject) -> None:
    rt = eager_runtime
    name, drawn = data.draw(task_bodies(rt))
    try:  # what a task receives has come through JSON (an int of over 4300 digits cannot)
        body = json.loads(json.dumps(drawn))
    except ValueError:
        reject()
    task_id = str(uuid.uuid4())
    result = rt.celery.tasks[name].apply(args=(body,), task_id=task_id)
    outcome = result.result
    if isinstance(outcome, Reject):
        letters = [d for d in rt.dead_letters.find(status=None) if d.message_key == task_id]
        assert len(letters) == 1, f"{name}: rejected without a dead letter"
        assert letters[0].task == name and letters[0].attempts >= 1
        return
    if isinstance(outcome, (StepFailed, BusinessFailure)):
        return  # a well-formed command the service turned down (no such order, nothing authorized)
    assert not isinstance(outcome, BaseException), f"{name} raised {outcome!r} for {safe_repr(body)}"


# --- the consumer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def consumer_probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerProbe]:
    purge_memory_broker()
    rt = Runtime(Settings(data_dir=tmp_path_factory.mktemp("consumer"), max_message_bytes=8192))
    rt.prepare()
    yield ConsumerProbe(rt)
    rt.close()
    purge_memory_broker()


#: Celery's protocol-2 headers (``eta`` and ``expires`` aside: a valid one defers or drops
#: a message by design, which is not what is tested here).
CELERY_HEADERS = (
    "lang",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "shadow",
    "stamped_headers",
    "stamps",
)


def headers_strategy(task_names: list[str]) -> st.SearchStrategy[Any]:
    task = st.sampled_from(task_names) | st.sampled_from(["payment.teleport", ""]) | json_values
    task_id = st.uuids().map(str) | json_values
    celery = st.fixed_dictionaries(
        {"task": task, "id": task_id}, optional={name: json_values for name in CELERY_HEADERS}
    )
    return st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=4) | celery


def encode(value: Any) -> bytes:
    """JSON, as a producer would send it; a number JSON can carry but Python will not read
    back (over 4300 digits) goes out as its digits."""
    try:
        return json.dumps(value).encode()
    except ValueError:
        return b"[[" + b"9" * 4400 + b"], {}, {}]"


EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def body_strategy() -> st.SearchStrategy[bytes]:
    encoded = st.one_of(
        json_values.map(encode),
        st.tuples(
            st.lists(json_values, max_size=3), st.dictionaries(st.text(max_size=8), json_values), json_values
        ).map(lambda t: encode(list(t))),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda b: encode([[b], {}, EMPTY_EMBED])),
    )
    return st.binary(max_size=200) | encoded | st.binary(min_size=8000, max_size=9000)


@pytest.mark.timeout(240)
@settings(PROPERTY, max_examples=500)
@given(data=st.data())
def test_the_consumer_passes_on_or_dead_letters_any_message(consumer_probe: ConsumerProbe, data: st.DataObject) -> None:
    probe = consumer_probe
    names = sorted(service_tasks(probe.rt))
    body = data.draw(body_strategy(), label="body")
    headers = data.draw(headers_strategy(names), label="headers")
    content_type = data.draw(
        st.sampled_from(["application/json", "application/data", "application/x-python-serialize", "text/plain"])
        | st.none(),
        label="content_type",
    )
    outcome = probe.deliver(body, headers, content_type=content_type)
    assert not outcome.requeued, "a bad message would come back for ever"
    if outcome.handed_on:
        assert not outcome.rejected and outcome.dead_letter is None, outcome
        assert len(body) <= probe.rt.settings.max_message_bytes
        return
    assert outcome.rejected and not outcome.acked, f"neither run nor dead-lettered: {outcome}"
    assert outcome.dead_letter is not None, "rejected without a dead letter"
    if len(body) > probe.rt.settings.max_message_bytes:
        assert outcome.dead_letter.reason.startswith("message too large")


@pytest.mark.timeout(60)
def test_a_pickled_message_is_refused_unread(consumer_probe: ConsumerProbe) -> None:
    """A pickle that would run code if loaded: refused by content type before any decoding."""
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path("/tmp/checkout-pickle-ran").touch, ())

    marker = Path("/tmp/checkout-pickle-ran")
    marker.unlink(missing_ok=True)
    headers = {"task": "payment.refund", "id": str(uuid.uuid4()), "lang": "py"}
    body = pickle.dumps([[{"order_id": "o"}], {}, {"boom": Boom()}])
    outcome = consumer_probe.deliver(
        body, headers, content_type="application/x-python-serialize", content_encoding="binary"
    )
    assert outcome.rejected and outcome.dead_letter is not None
    assert "untrusted content" in outcome.dead_letter.reason or "pickle" in outcome.dead_letter.reason
    assert not marker.exists(), "the pickle was loaded"
