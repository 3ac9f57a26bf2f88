"""``python -m app catalog`` and ``python -m app place``: what a customer sees and does."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli.output import money, print_table
from app.domain.errors import Busy, InvalidOrder

cli = typer.Typer()


@cli.command("catalog", short_help="list SKUs, prices and available stock")
def catalog() -> int:
    """The catalog: each SKU, its name and price, and the stock available to order."""
    import app as checkout

    items = checkout.list_catalog()
    print_table(
        [(i.sku, i.name, money(i.price_cents, i.currency), i.available) for i in items],
        ("sku", "name", "price", "available"),
    )
    return 0


def _lines(specs: list[str]) -> list[dict[str, object]]:
    """``MUG-01:2 TEE-01`` -> order lines; a quantity that is not a number goes to validation as given."""
    items: list[dict[str, object]] = []
    for spec in specs:
        sku, _, qty = spec.partition(":")
        items.append({"sku": sku, "qty": int(qty) if qty.isdigit() else qty or 1})
    return items


@cli.command("place", short_help="place one order and wait for its outcome")
def place(
    items: Annotated[
        list[str],
        typer.Argument(metavar="SKU[:QTY]", help="what to order, e.g. MUG-01:2 TEE-01 (quantity 1 unless given)"),
    ],
    customer: Annotated[str, typer.Option("--customer", metavar="ID", help="the customer id")] = "cli-customer",
    token: Annotated[
        str,
        typer.Option("--token", metavar="TOKEN", help="the payment token: tok_ok, tok_declined, tok_flaky or tok_down"),
    ] = "tok_ok",
    country: Annotated[
        str | None, typer.Option("--country", metavar="CC", help="ISO 3166 alpha-2 shipping country (AQ is not served)")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="print the order id and return at once")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="how long to wait for the outcome")
    ] = 30.0,
) -> int:
    """Place one order and print its id, outcome and reason once the saga has ended.

    Exit 2 if the order is invalid (nothing placed; the line says which field and why),
    3 if it is refused because the system is busy (nothing written; the line says when to
    try again), 4 if its saga has not ended within --timeout (it is placed, and goes on)."""
    import app as checkout

    try:
        order_id = checkout.place_order(
            customer,
            _lines(items),
            payment_token=token,
            ship_to={"country": country} if country else None,
        )
    except InvalidOrder as exc:
        print(f"invalid order: {exc}", file=sys.stderr)
        return 2
    except Busy as exc:
        print(f"not placed: the system is {exc} (nothing was written)", file=sys.stderr)
        return 3
    if no_wait:
        outcome(order_id)
        return 0
    try:
        view = checkout.wait_for_order(order_id, timeout=timeout)
    except TimeoutError:
        outcome(f"{order_id} PENDING")
        print(
            f"still PENDING after {timeout:g}s: the order is placed and its saga goes on; "
            f"`python -m app orders show {order_id}` follows it",
            file=sys.stderr,
        )
        return 4
    outcome(f"{order_id} {view.status} {view.reason or ''}".rstrip())
    return 0


def outcome(line: str) -> None:
    """The outcome line on stdout in one write: print() writes the line and its end apart,
    and a span exporter printing to stdout from its own thread (OTEL_TRACES_EXPORTER=console)
    could land between them, in the middle of the line a script reads."""
    sys.stdout.write(line + "\n")
