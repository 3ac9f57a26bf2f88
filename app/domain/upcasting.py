"""Reading old versions of an event: upcasters, and downcasters for writing one.

A breaking change to an event is a new version. The event logs keep every event as it was
written, so the older versions stay readable here: an *upcaster* is a plain function from a
payload of version N to one of version N+1, registered for ``(type, N)``; :func:`upcast`
chains them (v1 -> v2 -> v3) up to the latest, and every reader — the consumers
(``Envelope.open``), replay's consumers and the rebuild (``app.services.order.fold``) — sees
the latest shape only. A *downcaster* goes the other way, from version N to N-1, so that a
producer can keep writing the version its consumers still read while they are upgraded
(``CHECKOUT_EMIT_VERSIONS``, :func:`downcast`).

Both work on plain payload dictionaries, before validation, and never fail on a payload
that lacks a field: the model of the version they produce says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.domain.catalog import CATALOG
from app.domain.values import Address

Payload = dict[str, Any]
Caster = Callable[[Mapping[str, Any]], Payload]

#: ``(type, N)`` -> the function from a version-N payload to a version-N+1 one.
UPCASTERS: dict[tuple[str, int], Caster] = {}
#: ``(type, N)`` -> the function from a version-N payload to a version-N-1 one.
DOWNCASTERS: dict[tuple[str, int], Caster] = {}


def upcaster(type_: str, version: int) -> Callable[[Caster], Caster]:
    """Register ``fn`` as the upcaster of ``type_`` from ``version`` to ``version + 1``."""
    return _register(UPCASTERS, type_, version, "upcaster")


def downcaster(type_: str, version: int) -> Callable[[Caster], Caster]:
    """Register ``fn`` as the downcaster of ``type_`` from ``version`` to ``version - 1``."""
    return _register(DOWNCASTERS, type_, version, "downcaster")


def _register(table: dict[tuple[str, int], Caster], type_: str, version: int, kind: str) -> Callable[[Caster], Caster]:
    def register(fn: Caster) -> Caster:
        if (type_, version) in table:
            raise ValueError(f"{kind} of {type_!r} version {version} registered twice")
        table[type_, version] = fn
        return fn

    return register


def upcast(type_: str, version: int, payload: Mapping[str, Any]) -> Payload:
    """``payload``, written as ``type_`` version ``version``, in the latest version this code
    has upcasters to (itself, copied, when it is the latest already)."""
    lifted = dict(payload)
    while (type_, version) in UPCASTERS:
        lifted = UPCASTERS[type_, version](lifted)
        version += 1
    return lifted


def downcast(type_: str, version: int, payload: Mapping[str, Any], to: int) -> Payload:
    """``payload`` of ``type_`` version ``version`` as version ``to`` (at most ``version``).
    Raises LookupError when a step down has no downcaster."""
    lowered = dict(payload)
    while version > to:
        fn = DOWNCASTERS.get((type_, version))
        if fn is None:
            raise LookupError(f"{type_} has no downcaster from version {version} to {version - 1}")
        lowered = fn(lowered)
        version -= 1
    return lowered


def can_write(type_: str, latest: int, version: int) -> bool:
    """Whether a ``type_`` event of version ``latest`` can be written as ``version``."""
    return 1 <= version <= latest and all((type_, v) in DOWNCASTERS for v in range(version + 1, latest + 1))


# --- OrderPlaced v1 <-> v2 -----------------------------------------------------------

_PRICES = {product.sku: (product.price_cents, product.currency) for product in CATALOG}
_PLACEHOLDERS = {name: info.default for name, info in Address.model_fields.items() if isinstance(info.default, str)}


@upcaster("OrderPlaced", 1)
def order_placed_v1_to_v2(payload: Mapping[str, Any]) -> Payload:
    """OrderPlaced v1 -> v2.

    ``ship_to``: a field a v1 event left out is what every v1 reader took it to be, the
    placeholder of v1's address (``Address``'s defaults); a field given is kept.

    ``unit_price_cents``: the v1 event says the total, not the prices, so each line's price is
    filled only where the total proves it, else left ``null`` (v2 allows it: "not known"):

    1. every line of one SKU: the price is the total over the quantity, when it divides evenly;
    2. otherwise the catalog's prices, when at those prices the lines add up to the total
       (in the order's currency) — they were the prices then;
    3. otherwise ``null`` on every line: a price that is a guess would be read as a fact.
    """
    lifted = dict(payload)
    ship_to = payload.get("ship_to")
    if isinstance(ship_to, Mapping):
        lifted["ship_to"] = {**_PLACEHOLDERS, **ship_to}
    lines = payload.get("lines")
    if isinstance(lines, list | tuple) and all(isinstance(line, Mapping) for line in lines):
        prices = _v1_prices(lines, payload.get("total_cents"), payload.get("currency"))
        lifted["lines"] = [{**line, "unit_price_cents": prices.get(str(line.get("sku")))} for line in lines]
    return lifted


def _v1_prices(
    lines: list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...], total: Any, currency: Any
) -> dict[str, int]:
    """Each SKU's unit price, as far as a v1 event's total proves it (empty: not proven)."""
    qtys: dict[str, int] = {}
    for line in lines:
        sku, qty = line.get("sku"), line.get("qty")
        if not isinstance(sku, str) or not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            return {}
        qtys[sku] = qtys.get(sku, 0) + qty
    if not isinstance(total, int) or isinstance(total, bool) or not qtys:
        return {}
    if len(qtys) == 1:
        ((sku, qty),) = qtys.items()
        return {sku: total // qty} if total % qty == 0 else {}
    if all(_PRICES.get(sku, (0, None))[1] == currency for sku in qtys):
        catalog = {sku: _PRICES[sku][0] for sku in qtys}
        if sum(catalog[sku] * qty for sku, qty in qtys.items()) == total:
            return catalog
    return {}


@downcaster("OrderPlaced", 2)
def order_placed_v2_to_v1(payload: Mapping[str, Any]) -> Payload:
    """OrderPlaced v2 -> v1, for consumers still on v1: the lines lose their prices (v1 has
    none; upcast again, they come back by the rules above whenever the total proves them); a
    v2 address is a valid v1 one as it is."""
    lowered = dict(payload)
    lines = payload.get("lines")
    if isinstance(lines, list | tuple):
        lowered["lines"] = [
            {k: v for k, v in line.items() if k != "unit_price_cents"} if isinstance(line, Mapping) else line
            for line in lines
        ]
    return lowered
