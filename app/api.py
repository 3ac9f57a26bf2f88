"""The Python API: place, read and wait for orders.

With the default (embedded) settings the in-process workers start on first use and stop
at interpreter exit, so ``app.wait_for_order(app.place_order("c1", [...]))`` just works.
With a real broker configured the API only writes orders (the workers run elsewhere).
"""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from app.bootstrap import Runtime
from app.domain.commands import PlaceOrder
from app.domain.errors import Busy, InvalidOrder
from app.domain.states import OrderStatus
from app.domain.values import DEFAULT_ADDRESS
from app.messaging import tracing
from app.persistence.db import is_contention
from app.services.order import OrderView
from config.settings import Settings


class System:
    """A running system as this process sees it: the runtime, plus workers if embedded."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.runtime = Runtime(settings)
        self.workers: Any = None

    def start(self) -> System:
        rt = self.runtime
        rt.trace("checkout" if rt.settings.embedded else "checkout-api")
        if rt.settings.embedded:
            from app.embedded import EmbeddedWorkers

            self.workers = EmbeddedWorkers(rt)
            self.workers.start()
        else:
            rt.prepare(("order",))
        return self

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        self.runtime.close()


_lock = threading.Lock()
_system: System | None = None


def start(settings: Settings | None = None) -> System:
    """Start the system for this process (idempotent). Called on first use if not before."""
    global _system
    with _lock:
        if _system is None:
            _system = System(settings).start()
        return _system


def stop() -> None:
    """Stop the in-process workers (if any) and close connections."""
    global _system
    with _lock:
        if _system is not None:
            _system.stop()
            _system = None


# Stopped when the main thread ends, before Python's thread pools stop taking work (their
# own hook, registered when first imported, runs after this one): a message delivered to
# the in-process workers meanwhile would otherwise find no thread to run on. ``atexit``
# still covers an interpreter without that hook.
_at_thread_exit = getattr(threading, "_register_atexit", None)
if _at_thread_exit is not None:
    import concurrent.futures.thread  # noqa: F401  (its exit hook registered first, so run last)

    _at_thread_exit(stop)
atexit.register(stop)


def _current() -> System:
    return _system if _system is not None else start()


#: Longest field name or offending value an InvalidOrder message quotes.
QUOTED_CHARS = 40

#: How long a caller whose order lost to contention every time is told to wait (Busy).
CONTENTION_RETRY_AFTER = 1.0


def _field_name(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            text = str(part)  # an unexpected key is the caller's: quote no more than a glance of it
            text = text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "..."
            name += f".{text}" if name else text
    return name or "order"


def _shown(value: Any) -> str:
    """`` (got <value>)`` for a short scalar input, else nothing (never the repr of a huge
    input: an int of thousands of digits cannot even be turned into a string)."""
    if isinstance(value, str) and len(value) > QUOTED_CHARS:
        return ""
    if isinstance(value, int) and abs(value) >= 10**QUOTED_CHARS:
        return ""
    if not isinstance(value, (str, int, float)):
        return ""
    text = repr(value)
    return f" (got {text})" if len(text) <= QUOTED_CHARS else ""


def validate_order(
    customer_id: Any,
    items: Any,
    payment_token: Any = "tok_ok",
    ship_to: Any = None,
    idempotency_key: Any = None,
    currency: Any = "EUR",
) -> PlaceOrder:
    """Check an order's shape at the edge; raise InvalidOrder naming the first bad field."""
    try:
        return PlaceOrder.model_validate(
            {
                "customer_id": customer_id,
                "items": items,
                "payment_token": payment_token,
                "ship_to": DEFAULT_ADDRESS.model_dump() if ship_to is None else ship_to,
                "idempotency_key": idempotency_key,
                "currency": currency,
            }
        )
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        shown = _shown(error.get("input"))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidOrder(_field_name(tuple(error["loc"])), f"{message}{shown}") from None


def place_order(
    customer_id: str,
    items: list[dict[str, Any]],
    payment_token: str = "tok_ok",
    ship_to: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    currency: str = "EUR",
) -> str:
    """Place an order and start its saga; returns the order id.

    ``items`` is a list of ``{"sku": str, "qty": int}``. Bad input raises
    :class:`app.InvalidOrder` naming the field; nothing is written or enqueued. The same
    ``idempotency_key`` with the same order returns the same order id and places nothing new;
    with a different order it raises :class:`app.IdempotencyKeyReused` (an InvalidOrder). Over capacity it
    raises :class:`app.Busy` with a ``retry_after`` in seconds; nothing is written.
    """
    request = validate_order(customer_id, items, payment_token, ship_to, idempotency_key, currency)
    return admit_and_place(_current().runtime, request)


def admit_and_place(rt: Runtime, request: PlaceOrder) -> str:
    """Place a validated order if admission control lets it in; raise :class:`app.Busy`
    otherwise (nothing written). A retry of an order placed before — the same idempotency
    key — returns its id even while busy: it adds no work."""
    try:
        rt.admission.check()
    except Busy:
        if request.idempotency_key is not None:
            existing = rt.order.find_by_idempotency_key(request.idempotency_key, request.fingerprint())
            if existing is not None:
                return existing
        raise
    try:
        # the root of the order's trace (tracing on); the event the order writes carries it
        with tracing.span("place_order", **{tracing.SERVICE: "order"}) as span:
            order_id, _created = rt.order.place(request)
            if span is not None:
                span.set_attribute(tracing.ORDER_ID, order_id)
    except OperationalError as exc:
        if not is_contention(exc):
            raise
        # the order's transaction lost to others every time it ran: nothing was written
        raise Busy(CONTENTION_RETRY_AFTER, "the order database is contended (serialization failures)") from exc
    return order_id


def get_order(order_id: str) -> OrderView:
    """The order's status, reason, total and timeline. Raises :class:`app.OrderNotFound`."""
    return _current().runtime.order.view(order_id)


def wait_for_order(order_id: str, timeout: float = 30.0, poll: float = 0.02) -> OrderView:
    """Return the order once COMPLETED or CANCELLED — or NEEDS_ATTENTION, parked until an
    operator acts (``python -m app orders attention``); raise TimeoutError after ``timeout`` s."""
    rt = _current().runtime
    deadline = time.monotonic() + timeout
    while True:
        if rt.order.status(order_id) != OrderStatus.PENDING:
            return rt.order.view(order_id)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"order {order_id} is still PENDING after {timeout}s")
        time.sleep(poll)


@dataclass(frozen=True)
class CatalogItem:
    sku: str
    name: str
    price_cents: int
    currency: str
    available: int


def list_catalog() -> list[CatalogItem]:
    """Every SKU with its price and the stock available right now."""
    rt = _current().runtime
    levels = rt.inventory.levels()
    return [
        CatalogItem(sku, p["name"], p["price_cents"], p["currency"], levels[sku].available if sku in levels else 0)
        for sku, p in rt.order.prices().items()
    ]
