"""The operator's endpoints over real HTTP: dead letters listed, read and sent again, parked
sagas retried, each bulk act previewed first and done only with its preview's token, and
CHECKOUT_OPERATOR_TOKEN guarding them apart from CHECKOUT_API_TOKEN."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from app.api import System
from app.domain.saga import CHECKOUT
from app.http import create_app
from app.operations.bulk import CARRIER, EXTERNAL_CALLS, PAYMENT_GATEWAY
from tests.conftest import publish_raw, wait_until
from tests.http.conftest import embedded_system, served

MUG = [{"sku": "MUG-01", "qty": 1}]
STALE = "0" * 64

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The module's system, whose steps give up after one retry (a compensation after four):
    its dead letters and parked sagas come quickly."""
    with embedded_system(tmp_path_factory.mktemp("operator"), retry_max=1) as system:
        yield system


def place(client: httpx.Client, **fields: Any) -> str:
    body = {"customer_id": f"op-{uuid.uuid4().hex[:12]}", "items": MUG, **fields}
    placed = client.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    return str(placed.json()["order_id"])


def void_down(*args: Any, **kwargs: Any) -> Any:
    """The payment service's void with its database gone: an authorization cannot be released."""
    raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def status_of(client: httpx.Client, order_id: str) -> str:
    return str(client.get(f"/orders/{order_id}").json()["status"])


def dead_letters(client: httpx.Client, **filters: str) -> list[dict[str, Any]]:
    answer = client.get("/dead-letters", params=filters)
    assert answer.status_code == 200, answer.text
    letters: list[dict[str, Any]] = answer.json()["dead_letters"]
    return letters


def letter_status(client: httpx.Client, letter_id: str) -> str:
    return str(client.get(f"/dead-letters/{letter_id}").json()["status"])


def test_every_task_calling_the_gateway_or_the_carrier_is_marked_external(embedded: System) -> None:
    registered = set(embedded.runtime.celery.tasks)
    assert set(EXTERNAL_CALLS) <= registered  # no name in the map is a task that does not exist
    outside = {"payment": PAYMENT_GATEWAY, "shipping": CARRIER}
    for step in CHECKOUT.steps:
        for task in (step.task, step.reaction, step.compensation and step.compensation.task):
            if task is not None and task.split(".")[0] in outside:
                assert EXTERNAL_CALLS.get(task) == outside[task.split(".")[0]], task


def test_a_bulk_redrive_is_previewed_then_done_with_the_previews_token(client: httpx.Client) -> None:
    order_id = place(client, payment_token="tok_down")
    (letter,) = wait_until(lambda: dead_letters(client, order=order_id), timeout=30, what="the dead letter")
    assert (letter["queue"], letter["task"], letter["status"]) == ("payment", "payment.authorize", "DEAD")
    detail = client.get(f"/dead-letters/{letter['id'][:8]}").json()
    assert detail["id"] == letter["id"] and "payment_unavailable" in detail["reason"]
    assert "TransientFailure" in detail["traceback"]

    answer = client.post("/dead-letters/redrive", json={"order_id": order_id, "reason": "PAYMENT_UNAVAILABLE"})
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert (preview["count"], preview["external_count"]) == (1, 1)
    (item,) = preview["letters"]
    assert item["id"] == letter["id"] and item["task"] == "payment.authorize"
    assert (item["external"], item["calls_external"], item["blocked"]) == (PAYMENT_GATEWAY, True, None)
    assert letter_status(client, letter["id"]) == "DEAD"  # a preview sends nothing

    wrong = client.post("/dead-letters/redrive", json={"order_id": order_id, "confirm": STALE})
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["preview"]["letters"][0]["id"] == letter["id"]
    assert letter_status(client, letter["id"]) == "DEAD"

    body = {"order_id": order_id, "reason": "PAYMENT_UNAVAILABLE", "confirm": preview["token"]}
    done = client.post("/dead-letters/redrive", json=body)
    assert done.status_code == 200, done.text
    assert [d["id"] for d in done.json()["redriven"]] == [letter["id"]] and done.json()["not_sent"] == []
    assert letter_status(client, letter["id"]) == "REDRIVEN"

    again = client.post("/dead-letters/redrive", json=body)  # the set changed: the old token is stale
    assert again.status_code == 409, again.text
    assert again.json()["preview"]["count"] == 0
    assert dead_letters(client, order=order_id, status="REDRIVEN")[0]["id"] == letter["id"]

    single = client.post(f"/dead-letters/{letter['id']}/redrive")
    assert single.status_code == 409 and "not DEAD" in single.json()["detail"], single.text


def test_an_empty_selection_previews_and_confirms_nothing(client: httpx.Client) -> None:
    nobody = {"order_id": f"nobody-{uuid.uuid4().hex}"}
    preview = client.post("/dead-letters/redrive", json=nobody).json()
    assert (preview["count"], preview["letters"]) == (0, [])
    done = client.post("/dead-letters/redrive", json={**nobody, "confirm": preview["token"]})
    assert done.status_code == 200 and done.json() == {"redriven": [], "not_sent": []}


def test_a_malformed_letter_calls_nothing_outside_and_is_sent_again_alone(
    client: httpx.Client, embedded: System
) -> None:
    publish_raw(embedded, json.dumps({"hello": "world"}).encode(), {}, "inventory.task")

    letters = wait_until(lambda: dead_letters(client, queue="inventory", reason="not a task"), timeout=30)
    preview = client.post("/dead-letters/redrive", json={"queue": "inventory", "reason": "NOT A TASK"}).json()
    assert {i["id"] for i in preview["letters"]} == {d["id"] for d in letters}
    assert all(i["task"] is None and i["external"] is None and not i["calls_external"] for i in preview["letters"])
    assert preview["external_count"] == 0
    first = letters[0]["id"]

    sent = client.post(f"/dead-letters/{first}/redrive")
    assert sent.status_code == 200, sent.text
    assert sent.json()["letter"]["id"] == first and letter_status(client, first) == "REDRIVEN"
    # it was sent for real: it is unreadable again, so it dies again as a new letter
    wait_until(
        lambda: [d for d in dead_letters(client, queue="inventory", reason="not a task") if d["id"] != first],
        timeout=30,
        what="the message to die again",
    )


def test_unknown_letters_are_404_and_a_bad_filter_is_422(client: httpx.Client) -> None:
    assert client.get("/dead-letters/no-such-letter").status_code == 404
    assert client.post("/dead-letters/no-such-letter/redrive").status_code == 404
    assert client.post("/dead-letters/redrive", json={"colour": "red"}).status_code == 422
    assert client.get("/dead-letters", params={"status": "ALIVE"}).status_code == 422


def test_parked_sagas_are_listed_previewed_and_retried_with_the_token(
    client: httpx.Client, embedded: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = embedded.runtime
    real_void = rt.payment.void
    monkeypatch.setattr(rt.payment, "void", void_down)  # the authorization cannot be released
    order_id = place(client, ship_to={"country": "AQ"})  # the carrier refuses: the saga compensates
    wait_until(lambda: status_of(client, order_id) == "NEEDS_ATTENTION", timeout=45, what="the saga parked")

    listed = client.get("/parked").json()["orders"]
    (mine,) = [o for o in listed if o["order_id"] == order_id]
    assert mine["waiting_on"] == "void_payment: payment_unavailable"
    (letter,) = mine["letters"]
    assert letter["task"] in ("payment.void", "payment.undo") and letter["external"] == PAYMENT_GATEWAY

    unknown = f"nobody-{uuid.uuid4().hex}"
    answer = client.post("/parked/retry", json={"order_ids": [order_id, unknown]})
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert [o["order_id"] for o in preview["orders"]] == [order_id] and preview["not_parked"] == [unknown]
    assert (preview["count"], preview["external_count"]) == (1, 1)
    assert status_of(client, order_id) == "NEEDS_ATTENTION"  # a preview does nothing
    assert letter_status(client, letter["id"]) == "DEAD"

    stale = client.post("/parked/retry", json={"order_ids": [order_id, unknown], "confirm": STALE})
    assert stale.status_code == 409 and stale.json()["preview"]["token"] == preview["token"], stale.text
    assert status_of(client, order_id) == "NEEDS_ATTENTION"

    monkeypatch.setattr(rt.payment, "void", real_void)  # the cause is fixed
    done = client.post("/parked/retry", json={"order_ids": [order_id, unknown], "confirm": preview["token"]})
    assert done.status_code == 200, done.text
    assert [o["order_id"] for o in done.json()["retried"]] == [order_id]
    wait_until(lambda: status_of(client, order_id) == "CANCELLED", timeout=30, what="the order cancelled")
    assert client.get(f"/orders/{order_id}").json()["reason"] == "shipping_unavailable"
    assert letter_status(client, letter["id"]) == "REDRIVEN"
    assert order_id not in {o["order_id"] for o in client.get("/parked").json()["orders"]}

    again = client.post(f"/parked/{order_id}/retry")
    assert again.status_code == 409 and "not NEEDS_ATTENTION" in again.json()["detail"], again.text
    assert client.post(f"/parked/{unknown}/retry").status_code == 404


OPERATOR_ROUTES = [
    ("GET", "/dead-letters"),
    ("GET", "/dead-letters/some-id"),
    ("POST", "/dead-letters/some-id/redrive"),
    ("POST", "/dead-letters/redrive"),
    ("GET", "/parked"),
    ("POST", "/parked/some-id/retry"),
    ("POST", "/parked/retry"),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_operator_token_guards_the_operator_endpoints_and_only_them(embedded: System) -> None:
    with (
        served(create_app(embedded, token="api-secret", operator_token="op-secret")) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        for method, path in OPERATOR_ROUTES:
            for headers in ({}, bearer("api-secret"), bearer("wrong")):
                answer = http.request(method, path, json={} if method == "POST" else None, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert "CHECKOUT_OPERATOR_TOKEN" in answer.json()["detail"]
        assert http.get("/dead-letters", headers=bearer("op-secret")).status_code == 200
        assert http.post("/parked/retry", json={}, headers=bearer("op-secret")).status_code == 200
        assert http.get("/orders", headers=bearer("api-secret")).status_code == 200
        assert http.get("/orders", headers=bearer("op-secret")).status_code == 401  # each token opens its own
        spec = http.get("/openapi.json", headers=bearer("api-secret")).json()
        assert "401" in spec["paths"]["/parked/retry"]["post"]["responses"]
        assert {"200", "409", "422"} <= set(spec["paths"]["/dead-letters/redrive"]["post"]["responses"])

    with served(create_app(embedded, token="api-secret")) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/parked").status_code == 401  # the API token guards them when it is the only one
        assert http.get("/parked", headers=bearer("api-secret")).status_code == 200

    only_operator = create_app(embedded, operator_token="op-secret")
    with served(only_operator) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/dead-letters").status_code == 401
        assert http.get("/orders").status_code == 200  # only the operator's endpoints are guarded


def test_a_letter_that_cannot_be_sent_again_is_shown_blocked_refused_alone_and_passed_over(
    client: httpx.Client, embedded: System
) -> None:
    publish_raw(embedded, b"x" * (embedded.runtime.settings.max_message_bytes + 1), {}, "order.task")
    (letter,) = wait_until(
        lambda: dead_letters(client, queue="order", reason="message too large"), timeout=30, what="the dead letter"
    )
    selection = {"queue": "order", "reason": "message too large"}
    preview = client.post("/dead-letters/redrive", json=selection).json()
    (item,) = preview["letters"]
    assert item["id"] == letter["id"] and "cannot be sent again" in item["blocked"]

    refused = client.post(f"/dead-letters/{letter['id']}/redrive")
    assert refused.status_code == 409 and "cannot be sent again" in refused.json()["detail"], refused.text
    done = client.post("/dead-letters/redrive", json={**selection, "confirm": preview["token"]}).json()
    assert done["redriven"] == [] and [n["id"] for n in done["not_sent"]] == [letter["id"]]
    assert letter_status(client, letter["id"]) == "DEAD"
