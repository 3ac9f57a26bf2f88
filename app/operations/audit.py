"""The auditor: checks the invariants of the design (§6) over the services' databases.

It is an operator's tool, so unlike a service it reads every service's tables (and the
fake gateway's ledger, the "bank's" own books). Run it when no saga is in flight; with
``settle`` it re-checks until clean or until the time is up, for runs that just ended.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from app.adapters.fake_carrier import bookings
from app.adapters.fake_gateway import ledger
from app.domain.catalog import CATALOG
from app.domain.states import TERMINAL, OrderStatus
from app.messaging.queues import queue_depths
from app.operations.dlq import RESOLVED
from app.persistence.deadletters import DEAD
from app.services.inventory import reservation_rows
from app.services.order import order_lines, order_rows, timeline
from app.services.payment import payment_rows
from app.services.shipping import shipment_rows

if TYPE_CHECKING:
    from app.operations.system import System


@dataclass
class Report:
    orders: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    events: int = 0
    dead_letters: int = 0
    violations: list[str] = field(default_factory=list)
    #: Not a broken invariant, but worth a look: orders cancelled because their saga ran
    #: out of time (``deadline_exceeded``), which a healthy system should not need.
    warnings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.statuses.items())) or "no orders"
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        if self.clean:
            return (
                f"clean: {self.orders} orders ({counts}), {self.events} events, "
                f"{self.dead_letters} dead letters accounted for, 0 violations{warned}"
            )
        return f"{len(self.violations)} violation(s) over {self.orders} orders ({counts}){warned}"


def audit(rt: System, settle: float = 0.0, drain: float | None = None) -> Report:
    """Check every invariant; with ``settle`` > 0, retry until clean or time is up.

    With ``drain`` (seconds) the broker is asked too: first wait up to that long for the
    service queues to empty, then count every message still queued as a violation (sagas
    in flight: the books are not final yet)."""
    deadline = time.monotonic() + settle
    if drain is not None:
        end = time.monotonic() + drain
        while _queued(rt) and time.monotonic() < end:
            time.sleep(0.2)
    while True:
        report = _audit_once(rt)
        if drain is not None:
            _check_queues(rt, report.violations)
        if report.clean or time.monotonic() >= deadline:
            return report
        time.sleep(0.2)


def _queued(rt: System) -> dict[str, int] | str:
    """Messages waiting per service queue (only those with some), or why the broker did not say."""
    try:
        depths = queue_depths(rt.celery, rt.settings)
    except Exception as exc:  # any failure to ask is the answer
        return f"{type(exc).__name__}: {exc}"
    return {queue: n for queue, (n, _) in depths.items() if queue in rt.settings.queues and n}


def _check_queues(rt: System, bad: list[str]) -> None:
    queued = _queued(rt)
    if isinstance(queued, str):
        bad.append(f"broker: cannot be asked what is still queued ({queued}); these books may not be final")
        return
    for queue, n in sorted(queued.items()):
        bad.append(f"broker: {n} message(s) still queued on {queue}: sagas are in flight, these books are not final")


def _audit_once(rt: System) -> Report:
    report = Report()
    bad = report.violations
    orders = {o["order_id"]: o for o in order_rows(rt.databases["order"])}
    reservations = {r["order_id"]: r for r in reservation_rows(rt.databases["inventory"])}
    payments = {p["order_id"]: p for p in payment_rows(rt.databases["payment"])}
    shipments = {s["order_id"]: s for s in shipment_rows(rt.databases["shipping"])}
    report.orders = len(orders)
    report.statuses = Counter(o["status"] for o in orders.values())

    # 1. every order is terminal
    for oid, order in orders.items():
        if order["status"] not in TERMINAL:
            why = f": {order['attention']}" if order.get("attention") else ""
            bad.append(f"order {oid}: {order['status']} (saga state {order['saga_state']}){why}, not finished")

    # 2. stock is conserved per SKU
    _check_stock(rt, reservations, bad)

    # 3 and 4. money per order, and what each outcome implies
    for oid, order in orders.items():
        _check_order(oid, order, reservations.get(oid), payments.get(oid), shipments.get(oid), bad)
    for oid in set(payments) | set(reservations) | set(shipments):
        if oid not in orders:
            bad.append(f"order {oid}: has payment/stock/shipment records but no order")
    _check_lines(rt, orders, reservations, bad)
    _check_gateway(rt, orders, bad)
    _check_carrier(rt, orders, shipments, bad)
    for oid, order in orders.items():
        if order["status"] == OrderStatus.CANCELLED and order["reason"] == "deadline_exceeded":
            report.warnings.append(
                f"order {oid}: cancelled as deadline_exceeded: its saga did not finish in time "
                "(a worker down or a queue lost? `python -m app orders show ID`)"
            )

    # 5. every event id appears once across all logs; every event was published and
    #    reached its order's timeline
    report.events = _check_logs(rt, orders, bad)

    # ... and every dead letter is accounted for: its order's saga still finished
    report.dead_letters = _check_dead_letters(rt, orders, bad)
    return report


def _check_logs(rt: System, orders: dict[str, dict[str, Any]], bad: list[str]) -> int:
    """Each event once across the logs, published, and in its order's timeline; how many events."""
    in_timeline = set(rt.databases["order"].query(lambda c: c.execute(select(timeline.c.event_id)).scalars().all()))
    seen: Counter[str] = Counter()
    for service, db in rt.databases.items():
        missing = 0
        for env in db.log():
            seen[env.event_id] += 1
            if env.key in orders and env.event_id not in in_timeline:
                missing += 1
        if missing:
            bad.append(f"{service}: {missing} event(s) not (yet) in their order's timeline")
        unpublished = db.unpublished(older_than_seconds=0)
        if unpublished:
            bad.append(f"{service}: {len(unpublished)} event(s) committed but not yet published")
    for event_id, count in seen.items():
        if count > 1:
            bad.append(f"event {event_id} appears {count} times in the logs")
    return sum(seen.values())


def _check_dead_letters(rt: System, orders: dict[str, dict[str, Any]], bad: list[str]) -> int:
    """No dead letter, open or marked resolved, holds up an unfinished order; how many are open."""
    letters = rt.dead_letters.find(status=None)
    for letter in letters:
        if letter.order_id not in orders or orders[letter.order_id]["status"] in TERMINAL:
            continue
        if letter.status == DEAD:
            bad.append(
                f"dead letter {letter.id[:8]} ({letter.task}, {letter.reason}) holds up order {letter.order_id}: "
                "redrive it, or compensate the order (python -m app dlq redrive --order ID [--compensate])"
            )
        elif letter.status == RESOLVED:
            bad.append(
                f"dead letter {letter.id[:8]} ({letter.task}) is marked resolved, but its order {letter.order_id} "
                f"is still {orders[letter.order_id]['status']}"
            )
    return sum(1 for letter in letters if letter.status == DEAD)


def _check_lines(
    rt: System, orders: dict[str, dict[str, Any]], reservations: dict[str, dict[str, Any]], bad: list[str]
) -> None:
    """The stock a completed order committed is its own lines, no more, no less."""
    rows = rt.databases["order"].query(lambda c: c.execute(select(order_lines)).all())
    lines: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        lines[row.order_id][row.sku] += row.qty
    for oid, order in orders.items():
        reservation = reservations.get(oid)
        if order["status"] != OrderStatus.COMPLETED or reservation is None:
            continue
        held: Counter[str] = Counter()
        for line in reservation["lines"]:
            held[line["sku"]] += line["qty"]
        if held != lines[oid]:
            bad.append(f"order {oid}: committed stock {dict(held)} is not the order's lines {dict(lines[oid])}")


def _check_stock(rt: System, reservations: dict[str, dict[str, Any]], bad: list[str]) -> None:
    held: dict[str, Counter[str]] = defaultdict(Counter)
    for res in reservations.values():
        for line in res["lines"]:
            held[res["status"]][line["sku"]] += line["qty"]
    seeded = {p.sku: p.initial_stock for p in CATALOG}
    for sku, level in rt.inventory.levels().items():
        total = level.available + level.reserved + level.committed
        if total != level.initial:
            bad.append(
                f"stock {sku}: initial {level.initial} != available {level.available} + reserved "
                f"{level.reserved} + committed {level.committed} ({total})"
            )
        for name in ("available", "reserved", "committed"):
            if getattr(level, name) < 0:
                bad.append(f"stock {sku}: {name} is negative ({getattr(level, name)})")
        if level.reserved != held["RESERVED"][sku]:
            bad.append(f"stock {sku}: reserved {level.reserved} but open reservations hold {held['RESERVED'][sku]}")
        if level.committed != held["COMMITTED"][sku]:
            bad.append(f"stock {sku}: committed {level.committed} but completed orders took {held['COMMITTED'][sku]}")
        if sku in seeded and level.initial != seeded[sku]:
            bad.append(f"stock {sku}: initial {level.initial} differs from the catalog's {seeded[sku]}")


def _check_order(
    oid: str,
    order: dict[str, Any],
    reservation: dict[str, Any] | None,
    payment: dict[str, Any] | None,
    shipment: dict[str, Any] | None,
    bad: list[str],
) -> None:
    status = order["status"]
    net = 0 if payment is None else payment["captured_cents"] - payment["refunded_cents"]
    if payment is not None and payment["status"] == "AUTHORIZED" and status in TERMINAL:
        bad.append(f"order {oid}: payment authorized but neither captured nor voided")
    if status == OrderStatus.COMPLETED:
        if net != order["total_cents"]:
            bad.append(f"order {oid}: COMPLETED but captured - refunded = {net}, total is {order['total_cents']}")
        if reservation is None or reservation["status"] != "COMMITTED":
            bad.append(f"order {oid}: COMPLETED but stock is {_state(reservation)}, not committed")
        if payment is None or payment["status"] != "CAPTURED":
            bad.append(f"order {oid}: COMPLETED but payment is {_state(payment)}, not captured")
        if shipment is None or shipment["status"] != "SCHEDULED":
            bad.append(f"order {oid}: COMPLETED but shipment is {_state(shipment)}, not scheduled")
    elif status == OrderStatus.CANCELLED:
        if net != 0:
            bad.append(f"order {oid}: CANCELLED but captured - refunded = {net}")
        if reservation is not None and reservation["status"] != "RELEASED":
            bad.append(f"order {oid}: CANCELLED but stock is {reservation['status']}, not released")
        if payment is not None and payment["status"] not in {"VOIDED", "REFUNDED"}:
            bad.append(f"order {oid}: CANCELLED but payment is {payment['status']}, not voided or refunded")
        if shipment is not None and shipment["status"] != "CANCELLED":
            bad.append(f"order {oid}: CANCELLED but shipment is {shipment['status']}, not cancelled")


def _check_gateway(rt: System, orders: dict[str, dict[str, Any]], bad: list[str]) -> None:
    """What the gateway itself did: each operation at most once per order, for the order's
    total; every authorization that was not captured was voided; money taken from a
    cancelled order was given back, and none given back on a completed one."""
    rows = rt.databases["payment"].query(lambda c: c.execute(select(ledger).where(ledger.c.outcome == "ok")).all())
    done: dict[str, Counter[str]] = defaultdict(Counter)
    amounts: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        done[row.reference][row.operation] += 1
        amounts[row.reference][row.operation] = row.amount_cents
    for oid, ops in done.items():
        for op in ("authorize", "capture", "void", "refund"):
            if ops[op] > 1:
                bad.append(f"order {oid}: gateway {op} happened {ops[op]} times")
        status = orders[oid]["status"] if oid in orders else None
        if ops["authorize"] and not (ops["capture"] or ops["void"]) and status in TERMINAL:
            bad.append(f"order {oid}: gateway authorization neither captured nor voided")
        if ops["capture"] and not ops["refund"] and (ops["void"] or status == OrderStatus.CANCELLED):
            voided = " (its authorization voided since)" if ops["void"] else ""
            bad.append(f"order {oid}: {status or 'no order'}, the gateway captured{voided} and never refunded")
        if status == OrderStatus.COMPLETED and ops["refund"]:
            bad.append(f"order {oid}: COMPLETED but the gateway refunded {amounts[oid]['refund']}")
        if oid in orders:
            total = orders[oid]["total_cents"]
            for op in ("authorize", "capture", "refund"):
                if op in amounts[oid] and amounts[oid][op] != total:
                    bad.append(f"order {oid}: gateway {op} of {amounts[oid][op]}, the order's total is {total}")


def _check_carrier(
    rt: System, orders: dict[str, dict[str, Any]], shipments: dict[str, dict[str, Any]], bad: list[str]
) -> None:
    """What the carrier itself did: a completed order's shipment booked there, under its
    tracking reference, and not cancelled; every booking of a cancelled order cancelled."""
    rows = rt.databases["shipping"].query(lambda c: c.execute(select(bookings)).all())
    booked: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        booked[row.reference][row.operation] = row.tracking_ref
    for oid, order in orders.items():
        ops = booked.get(oid, {})
        if order["status"] == OrderStatus.COMPLETED:
            shipment = shipments.get(oid)
            if "schedule" not in ops or "cancel" in ops:
                bad.append(f"order {oid}: COMPLETED but the carrier has it {'cancelled' if ops else 'not booked'}")
            elif shipment is not None and shipment["tracking_ref"] != ops["schedule"]:
                bad.append(f"order {oid}: shipment {shipment['tracking_ref']}, the carrier booked {ops['schedule']}")
        elif order["status"] == OrderStatus.CANCELLED and "schedule" in ops and "cancel" not in ops:
            bad.append(f"order {oid}: CANCELLED but the carrier's booking {ops['schedule']} was never cancelled")
    for oid in set(booked) - set(orders):
        bad.append(f"order {oid}: booked with the carrier but no such order")


def _state(row: dict[str, Any] | None) -> str:
    return "missing" if row is None else str(row["status"])
