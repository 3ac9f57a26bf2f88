"""What guards the front door: the bearer token (401 without it, /health open), the
per-customer rate limit (429 with Retry-After), admission control (503 with Retry-After,
nothing written, a retry of an earlier order still answered), and /health's 503."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from app.api import System, admit_and_place, validate_order
from app.http import create_app
from app.http.app import location, structured_string
from app.http.ratelimit import RateLimit
from app.persistence.db import utcnow
from app.services.order import orders
from tests.conftest import purge_memory_broker
from tests.http.conftest import http_settings, served

MUG = [{"sku": "MUG-01", "qty": 1}]
TOKEN = "s3cret-token"

pytestmark = pytest.mark.timeout(60)


def order_count(system: System) -> int:
    db = system.runtime.databases["order"]
    return int(db.query(lambda c: c.execute(select(func.count()).select_from(orders)).scalar_one()))


def test_with_a_token_every_endpoint_but_health_needs_it(embedded: System) -> None:
    with served(create_app(embedded, token=TOKEN)) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = order_count(embedded)
        for method, path in [
            ("POST", "/orders"),
            ("GET", "/orders"),
            ("GET", "/orders/some-id"),
            ("GET", "/orders/some-id/timeline"),
            ("GET", "/orders/some-id/events"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/"),  # the console and its partials
            ("GET", "/console/orders"),
            ("GET", "/console/audit/verdict"),
            ("POST", "/console/dead-letters/redrive"),
        ]:
            body = {"customer_id": "intruder", "items": MUG} if method == "POST" else None
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                answer = http.request(method, path, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
        assert order_count(embedded) == before  # the refused POSTs wrote nothing

        assert http.get("/health").status_code == 200  # a probe needs no token
        assert http.get("/console/static/htmx.min.js").status_code == 200  # no data: the sign-in page uses it
        assert http.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200  # nor /docs' files
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        placed = http.post("/orders", json={"customer_id": "insider", "items": MUG}, headers=authorized)
        assert placed.status_code == 201, placed.text
        assert http.get(placed.headers["location"], headers=authorized).status_code == 200
        assert http.get("/metrics", headers=authorized).status_code == 200
        assert http.get("/", headers=authorized).status_code == 200
        assert http.get("/docs", headers=authorized).status_code == 200
        assert http.get("/openapi.json", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_over_the_rate_limit_a_customer_is_429_with_retry_after(embedded: System) -> None:
    with served(create_app(embedded, rate_limit_per_minute=2)) as url, httpx.Client(base_url=url, timeout=30) as http:
        eager, other = f"eager-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
        assert [http.post("/orders", json={"customer_id": eager, "items": MUG}).status_code for _ in range(2)] == [
            201,
            201,
        ]
        before = order_count(embedded)
        refused = http.post("/orders", json={"customer_id": eager, "items": MUG})
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert order_count(embedded) == before
        assert http.post("/orders", json={"customer_id": other, "items": MUG}).status_code == 201


@pytest.fixture
def stalled(tmp_path: Path) -> Iterator[System]:
    """A system whose workers are not running, with admission control's limits small: two
    sagas in flight for 30 s make it busy."""
    purge_memory_broker()
    settings = http_settings(
        tmp_path, admission_target_seconds=1, admission_min_in_flight=2, admission_refresh_seconds=0
    )
    system = System(settings)
    system.runtime.prepare()
    yield system
    system.runtime.close()
    purge_memory_broker()


def test_over_capacity_an_order_is_503_with_retry_after_and_nothing_written(stalled: System) -> None:
    rt = stalled.runtime
    first = admit_and_place(rt, validate_order("c-1", MUG, idempotency_key="key-1"))
    admit_and_place(rt, validate_order("c-2", MUG))
    past = utcnow() - timedelta(seconds=30)
    rt.databases["order"].run(lambda uow: uow.conn.execute(update(orders).values(created_at=past)))

    with served(create_app(stalled)) as url, httpx.Client(base_url=url, timeout=30) as http:
        busy = http.post("/orders", json={"customer_id": "c-3", "items": MUG})
        assert busy.status_code == 503, busy.text
        assert int(busy.headers["retry-after"]) >= 1
        assert "busy" in busy.json()["detail"] and "nothing written" in busy.json()["detail"]
        assert order_count(stalled) == 2
        # the retry of an order placed before is answered, busy or not: it adds no work
        retry = http.post("/orders", json={"customer_id": "c-1", "items": MUG}, headers={"Idempotency-Key": "key-1"})
        assert retry.status_code == 201 and retry.json()["order_id"] == first
        # ... but not under the key of another order
        other = http.post("/orders", json={"customer_id": "c-9", "items": MUG}, headers={"Idempotency-Key": "key-1"})
        assert other.status_code == 422
        assert order_count(stalled) == 2


def test_health_is_503_when_a_check_fails(tmp_path: Path) -> None:
    settings = http_settings(
        tmp_path, broker_url="redis://127.0.0.1:1/0", database_url=f"sqlite:///{tmp_path / 'down.db'}"
    )
    system = System(settings)
    try:
        with served(create_app(system)) as url, httpx.Client(base_url=url, timeout=30) as http:
            health = http.get("/health")
            assert health.status_code == 503, health.text
            broker = next(c for c in health.json()["checks"] if c["name"] == "broker")
            assert broker["ok"] is False and health.json()["ok"] is False
    finally:
        system.runtime.close()


def test_a_field_of_invalid_order_is_located_as_fastapi_does() -> None:
    assert location("items[0].qty") == ["body", "items", 0, "qty"]
    assert location("ship_to.country") == ["body", "ship_to", "country"]
    assert location("order") == ["body"]
    assert location("idempotency_key") == ["header", "idempotency-key"]


def test_the_rate_limit_slides_over_a_minute() -> None:
    now = [1000.0]
    limit = RateLimit(2, clock=lambda: now[0])
    assert limit.admit("a") is None and limit.admit("a") is None
    assert limit.admit("a") == 60 and limit.admit("b") is None
    now[0] += 59.5
    assert limit.admit("a") == 1  # a refusal counts nothing
    now[0] += 0.5
    assert limit.admit("a") is None
    assert RateLimit(0).admit("a") is None  # off


def test_an_idempotency_key_may_be_a_structured_field_string() -> None:
    assert structured_string('"8e03978e-40d5"') == "8e03978e-40d5"
    assert structured_string(r'"a \"quoted\" \\ key"') == 'a "quoted" \\ key'
    assert structured_string("bare-key") == "bare-key" and structured_string('"') == '"'
    assert structured_string(None) is None


def test_the_consoles_sign_in_cookie_opens_the_console_only_and_only_from_its_own_pages(embedded: System) -> None:
    app = create_app(embedded, token=TOKEN, operator_token="op-secret")
    with served(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        sent_away = http.get("/console/saga", headers={"Accept": "text/html"})
        assert sent_away.status_code == 303, sent_away.text  # a browser is sent to sign in ...
        assert sent_away.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fsaga&needs=CHECKOUT_API_TOKEN"
        assert http.get("/console/saga").status_code == 401  # ... an API client is told 401
        refused = http.post("/console/sign-in", data={"token": "wrong", "next": "/"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers, refused.text

        signed = http.post("/console/sign-in", data={"token": TOKEN, "next": "//elsewhere.example/"})
        assert signed.status_code == 303 and signed.headers["location"] == "/"  # never off the site
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("console_api=") and TOKEN not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # http, not https
        for elsewhere in ("/\t/elsewhere.example/", "/\\elsewhere.example/", "https://elsewhere.example/"):
            again = http.post("/console/sign-in", data={"token": TOKEN, "next": elsewhere})
            assert again.headers["location"] == "/", elsewhere
        assert http.get("/").status_code == 200
        assert http.get("/orders").status_code == 401  # the JSON API still needs the bearer header
        assert http.get("/console/dead-letters").status_code == 401  # the operator's pages need its token

        http.post("/console/sign-in", data={"token": "op-secret", "next": "/console/dead-letters"})
        assert http.get("/console/dead-letters").status_code == 200
        assert http.get("/dead-letters").status_code == 401
        nobody = {"order_id": f"nobody-{uuid.uuid4().hex}"}
        htmx = {"Origin": url, "HX-Request": "true"}
        own_page = http.post("/console/dead-letters/redrive", data=nobody, headers=htmx)
        assert own_page.status_code == 200 and "nothing to redrive" in own_page.text, own_page.text
        assert "<nav>" not in own_page.text  # htmx's partial ...
        plain = http.post("/console/dead-letters/redrive", data=nobody, headers={"Origin": url})
        assert plain.status_code == 200 and "nothing to redrive" in plain.text and "<nav>" in plain.text  # ... a page
        for headers in ({}, {"Origin": "http://elsewhere.example"}, {"Origin": "null"}):
            forged = http.post("/console/dead-letters/redrive", data=nobody, headers=headers)
            assert forged.status_code == 403, (headers, forged.text)
