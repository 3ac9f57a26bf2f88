"""The HTTP API over a real embedded system: placing (201, Location, the view), idempotency
keys (the same order once, even from concurrent requests; another order under the same key
422), invalid input (422 naming the field, nothing written), reading (404, the list and its
cursor, the timeline as JSON and Mermaid), Server-Sent Events until the order is terminal,
the body size limit (413), /health, /metrics and the OpenAPI document."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.api import System
from app.domain.saga import SAGA_VERSION
from app.services.order import orders
from tests.conftest import wait_until
from tests.support.http import status_events

MUG = [{"sku": "MUG-01", "qty": 1}]

pytestmark = pytest.mark.timeout(60)


def customer() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def placed_by(system: System, customer_id: str) -> int:
    """How many orders the customer has (what was written, whatever the API answered)."""
    db = system.runtime.databases["order"]
    query = select(func.count()).select_from(orders).where(orders.c.customer_id == customer_id)
    return int(db.query(lambda c: c.execute(query).scalar_one()))


def total_orders(system: System) -> int:
    db = system.runtime.databases["order"]
    return int(db.query(lambda c: c.execute(select(func.count()).select_from(orders)).scalar_one()))


def finished(client: httpx.Client, order_id: str) -> dict[str, Any] | None:
    view: dict[str, Any] = client.get(f"/orders/{order_id}").json()
    return view if view["status"] in ("COMPLETED", "CANCELLED") else None


def test_an_order_placed_is_201_with_its_location_and_view(client: httpx.Client) -> None:
    who = customer()
    body = {"customer_id": who, "items": [{"sku": "MUG-01", "qty": 2}], "ship_to": {"country": "FR"}}
    placed = client.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    view = placed.json()
    assert placed.headers["location"] == f"/orders/{view['order_id']}"
    assert view["customer_id"] == who and view["total_cents"] == 2598 and view["currency"] == "EUR"
    assert view["lines"] == [{"sku": "MUG-01", "qty": 2}] and view["ship_to"]["country"] == "FR"
    assert view["saga_version"] == SAGA_VERSION  # the saga definition it started under

    done = wait_until(lambda: finished(client, view["order_id"]), timeout=30, what="the order to finish")
    assert done["status"] == "COMPLETED" and done["reason"] is None
    assert {e["type"] for e in done["events"]} >= {"OrderPlaced", "OrderCompleted"}
    assert client.get(placed.headers["location"]).json()["order_id"] == view["order_id"]


def test_the_same_idempotency_key_and_body_answers_the_same_order(client: httpx.Client, embedded: System) -> None:
    who, key = customer(), f"key-{uuid.uuid4()}"
    body = {"customer_id": who, "items": MUG, "currency": "EUR"}
    first = client.post("/orders", json=body, headers={"Idempotency-Key": key})
    # the same order, its JSON written otherwise (key order, a default spelt out or left out)
    again = client.post(
        "/orders",
        content=json.dumps({"currency": "EUR", "payment_token": "tok_ok", "items": MUG, "customer_id": who}),
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    # the key as the IETF draft writes it, a structured-field string, is the same key
    quoted = client.post("/orders", json=body, headers={"Idempotency-Key": f'"{key}"'})
    assert first.status_code == again.status_code == quoted.status_code == 201, (first.text, again.text)
    assert again.json()["order_id"] == quoted.json()["order_id"] == first.json()["order_id"]
    assert again.headers["location"] == first.headers["location"]
    assert placed_by(embedded, who) == 1


def test_the_same_idempotency_key_with_another_body_is_422(client: httpx.Client, embedded: System) -> None:
    who, key = customer(), f"key-{uuid.uuid4()}"
    first = client.post("/orders", json={"customer_id": who, "items": MUG}, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    other = client.post(
        "/orders", json={"customer_id": who, "items": [{"sku": "MUG-01", "qty": 5}]}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422, other.text
    (error,) = other.json()["detail"]
    assert error["loc"] == ["header", "idempotency-key"] and error["type"] == "idempotency_key_reused"
    assert first.json()["order_id"] in error["msg"] and "different" in error["msg"]
    assert placed_by(embedded, who) == 1


def test_concurrent_posts_with_one_key_place_one_order(base_url: str, embedded: System) -> None:
    who, key = customer(), f"key-{uuid.uuid4()}"
    body = {"customer_id": who, "items": MUG}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            return http.post("/orders", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["order_id"] for a in answers}) == 1
    assert placed_by(embedded, who) == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"items": [{"sku": "MUG-01", "qty": 0}]}, ["body", "items", 0, "qty"]),
        ({"items": [{"sku": "NOPE-1", "qty": 1}]}, ["body", "items", 0, "sku"]),
        ({"items": []}, ["body", "items"]),
        ({"items": MUG, "ship_to": {"country": "ZZ"}}, ["body", "ship_to", "country"]),
        ({"items": MUG, "currency": "XYZ"}, ["body", "currency"]),
        ({"items": MUG, "payment_token": "cash"}, ["body", "payment_token"]),
        ({"items": "MUG-01"}, ["body", "items"]),  # the wrong JSON type: FastAPI's own check
        ({"items": MUG, "coupon": "FREE"}, ["body", "coupon"]),  # a field place_order does not take
    ],
)
def test_invalid_input_is_422_naming_the_field_and_writes_nothing(
    client: httpx.Client, embedded: System, body: dict[str, Any], loc: list[Any]
) -> None:
    who = customer()
    answer = client.post("/orders", json={"customer_id": who, **body})
    assert answer.status_code == 422, answer.text
    assert loc in [error["loc"] for error in answer.json()["detail"]], answer.json()
    assert all(error["msg"] for error in answer.json()["detail"])
    assert placed_by(embedded, who) == 0


def test_missing_fields_a_bad_key_and_a_body_that_is_no_json_are_422(client: httpx.Client, embedded: System) -> None:
    before = total_orders(embedded)
    missing = client.post("/orders", json={"items": MUG})
    assert missing.status_code == 422
    assert {"type": "missing", "loc": ["body", "customer_id"]}.items() <= missing.json()["detail"][0].items()
    long_key = {"Idempotency-Key": "k" * 129}
    bad_key = client.post("/orders", json={"customer_id": customer(), "items": MUG}, headers=long_key)
    assert bad_key.status_code == 422 and bad_key.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    not_json = client.post("/orders", content=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert total_orders(embedded) == before


def test_a_body_over_the_limit_is_413_and_writes_nothing(client: httpx.Client, embedded: System) -> None:
    before = total_orders(embedded)
    huge = {"customer_id": customer(), "items": MUG, "ship_to": {"country": "FR", "name": "x" * 70_000}}
    answer = client.post("/orders", json=huge)
    assert answer.status_code == 413, answer.text
    assert total_orders(embedded) == before


def test_an_unknown_order_is_404(client: httpx.Client) -> None:
    for path in ("/orders/no-such-order", "/orders/no-such-order/timeline", "/orders/no-such-order/events"):
        answer = client.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert "no-such-order" in answer.json()["detail"]


def test_the_list_is_newest_first_and_pages_with_its_cursor(client: httpx.Client) -> None:
    for _ in range(3):
        assert client.post("/orders", json={"customer_id": customer(), "items": MUG}).status_code == 201
    everything = client.get("/orders", params={"limit": 500}).json()
    ids = [o["order_id"] for o in everything["orders"]]
    stamps = [o["created_at"] for o in everything["orders"]]
    assert len(ids) >= 3 and stamps == sorted(stamps, reverse=True)
    assert all(stamp.endswith("Z") or "+00:00" in stamp for stamp in stamps)  # UTC, said so

    paged: list[str] = []
    page = client.get("/orders", params={"limit": 2}).json()
    while True:
        paged += [o["order_id"] for o in page["orders"]]
        if page["next"] is None:
            break
        assert "limit=2" in page["next"]
        page = client.get(page["next"]).json()
    assert paged == ids

    declined = client.post("/orders", json={"customer_id": customer(), "items": MUG, "payment_token": "tok_declined"})
    order_id = declined.json()["order_id"]
    wait_until(lambda: finished(client, order_id), timeout=30, what="the declined order to finish")
    cancelled = client.get("/orders", params={"status": "CANCELLED", "reason": "card_declined"}).json()["orders"]
    assert order_id in [o["order_id"] for o in cancelled]
    assert all(o["status"] == "CANCELLED" and o["reason"] == "card_declined" for o in cancelled)

    assert client.get("/orders", params={"status": "LOST"}).status_code == 422
    assert client.get("/orders", params={"limit": 0}).status_code == 422
    unknown = client.get("/orders", params={"before": "no-such-order"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["query", "before"]


def test_the_timeline_as_json_and_as_mermaid(client: httpx.Client) -> None:
    order_id = client.post("/orders", json={"customer_id": customer(), "items": MUG}).json()["order_id"]
    wait_until(lambda: finished(client, order_id), timeout=30, what="the order to finish")
    story = client.get(f"/orders/{order_id}/timeline")
    assert story.status_code == 200
    events = story.json()["events"]
    assert events[0]["type"] == "OrderPlaced" and "OrderCompleted" in [e["type"] for e in events]
    assert story.json()["status"] == "COMPLETED" and story.json()["dead_letters"] == []
    diagram = client.get(f"/orders/{order_id}/timeline", params={"format": "mermaid"})
    assert diagram.status_code == 200 and diagram.headers["content-type"].startswith("text/plain")
    assert diagram.text.startswith("sequenceDiagram") and "OrderCompleted" in diagram.text
    assert client.get(f"/orders/{order_id}/timeline", params={"format": "svg"}).status_code == 422


@pytest.mark.parametrize(
    ("token", "outcome"), [("tok_flaky", ("COMPLETED", None)), ("tok_declined", ("CANCELLED", "card_declined"))]
)
def test_server_sent_events_follow_the_order_until_it_is_terminal(
    client: httpx.Client, token: str, outcome: tuple[str, str | None]
) -> None:
    order_id = client.post("/orders", json={"customer_id": customer(), "items": MUG, "payment_token": token}).json()[
        "order_id"
    ]
    seen = status_events(client, order_id)  # returns only once the server ends the stream
    assert seen, "no status event"
    assert all(s["order_id"] == order_id for s in seen)
    assert (seen[-1]["status"], seen[-1]["reason"]) == outcome
    assert all(s["status"] not in ("COMPLETED", "CANCELLED") for s in seen[:-1])  # terminal only at the end
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))  # a change each time
    # a stream opened on a finished order says where it ended, and ends
    assert status_events(client, order_id) == [seen[-1]]


def test_health_metrics_and_the_openapi_document(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["ok"] is True
    names = {c["name"] for c in health.json()["checks"]}
    assert "broker" in names and any("order" in name for name in names), names

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE checkout_orders_placed_total counter" in metrics.text

    spec = client.get("/openapi.json").json()
    assert {"/orders", "/orders/{order_id}", "/orders/{order_id}/timeline", "/orders/{order_id}/events"} <= set(
        spec["paths"]
    )
    assert {"201", "400", "413", "422", "429", "503"} <= set(spec["paths"]["/orders"]["post"]["responses"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


#: The content type each of the docs page's files must be served with, by its name's ending.
ASSET_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


def test_the_docs_page_loads_every_file_from_this_server(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", docs.text), docs.text  # no CDN: every file is this server's
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert {asset.rsplit(".", 1)[-1] for asset in assets} == {"js", "css", "png"}, assets
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        kind = answer.headers["content-type"].split(";")[0]
        assert kind in ASSET_TYPES[asset[asset.rindex(".") :]], (asset, kind)
        assert len(answer.content) > 100, asset
    assert "'/openapi.json'" in docs.text and client.get("/openapi.json").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not served
