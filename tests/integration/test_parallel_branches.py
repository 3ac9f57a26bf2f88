"""A failure in either parallel branch compensates the other — even when it ends later."""

from __future__ import annotations

from sqlalchemy import select

import app
from app.adapters.fake_gateway import ledger
from app.api import System
from app.operations.audit import audit


def gateway_ops(system: System, order_id: str) -> dict[str, str]:
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(select(ledger.c.operation, ledger.c.outcome).where(ledger.c.reference == order_id)).all()
    )
    return {r.operation: r.outcome for r in rows}


def test_failed_reservation_voids_an_authorization_that_succeeds_after_it(api: System, saga_mode: str) -> None:
    # tok_flaky makes the payment branch finish last, after two retries
    order_id = app.place_order("c", [{"sku": "POSTER-01", "qty": 30}], payment_token="tok_flaky")
    view = app.wait_for_order(order_id, timeout=60)
    assert (view.status, view.reason) == ("CANCELLED", "out_of_stock")
    assert audit(api.runtime, settle=10).clean  # settled: every event has reached the order
    view = app.get_order(order_id)
    ops = gateway_ops(api, order_id)
    if saga_mode == "orchestration":  # the chord waits for both branches, then voids
        assert view.steps["authorize_payment"] == "done" and view.steps["void_payment"] == "done"
        assert ops == {"authorize": "ok", "void": "ok"}
    else:  # payment undid its part on the failure event: mid-retries, or (on a busy machine,
        # where the event can come after the retries) by voiding the authorization; either way
        # no authorization stands
        assert view.steps["void_payment"] == "done"
        if view.steps.get("authorize_payment") == "done":
            assert ops == {"authorize": "ok", "void": "ok"}
        assert ops.get("authorize") != "ok" or ops.get("void") == "ok", ops
    assert audit(api.runtime, settle=10).clean


def test_declined_payment_releases_the_reservation(api: System, saga_mode: str) -> None:
    before = {i.sku: i.available for i in app.list_catalog()}
    order_id = app.place_order("c", [{"sku": "LAMP-01", "qty": 7}], payment_token="tok_declined")
    view = app.wait_for_order(order_id, timeout=60)
    assert (view.status, view.reason) == ("CANCELLED", "card_declined")
    assert audit(api.runtime, settle=10).clean  # settled: every event has reached the order
    view = app.get_order(order_id)
    if saga_mode == "orchestration":  # the chord lets both branches finish first
        assert view.steps["reserve_inventory"] == "done"
    # (choreography: the decline may reach inventory first; then the reservation never happens)
    assert view.steps["release_inventory"] == "done"
    assert {i.sku: i.available for i in app.list_catalog()} == before
    assert audit(api.runtime, settle=10).clean


def test_both_branches_failing_cancels_once(api: System, saga_mode: str) -> None:
    order_id = app.place_order("c", [{"sku": "POSTER-01", "qty": 30}], payment_token="tok_declined")
    view = app.wait_for_order(order_id, timeout=60)
    assert view.status == "CANCELLED" and view.reason in {"out_of_stock", "card_declined"}
    assert [e.type for e in view.events].count("OrderCancelled") == 1
    if saga_mode == "orchestration":  # the chord runs both branches
        assert gateway_ops(api, order_id) == {"authorize": "declined"}
    else:  # payment may hear of the stock failure first: then it never calls the gateway
        assert gateway_ops(api, order_id) in ({"authorize": "declined"}, {})
    assert audit(api.runtime, settle=10).clean
