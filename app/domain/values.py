"""Value types shared by events, commands and the API."""

from __future__ import annotations

from typing import Annotated

import pycountry
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_QTY = 1000
MAX_LINES = 100

#: The largest count or amount in minor units a message may carry: what the databases'
#: integer columns hold (a larger one would fail at the database, not at the edge).
MAX_INT = 2**31 - 1


def no_control_characters(value: str) -> str:
    """Refuse NUL, line breaks and other control characters: no name, SKU or key has one,
    and PostgreSQL refuses NUL in text outright (an error at the database, not at the edge).
    Refuse lone surrogates too: they are not text (no UTF-8 encodes them), and the database
    driver would fail on them."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("control characters (NUL, line breaks, ...) are not allowed")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("not valid Unicode text: a lone surrogate (\\ud800-\\udfff) is not allowed")
    return value


#: A one-line text field.
Text = Annotated[str, AfterValidator(no_control_characters)]


class Line(BaseModel):
    """One order line: a SKU and a quantity (1..1000)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    sku: Text = Field(min_length=1, max_length=32)
    qty: int = Field(ge=1, le=MAX_QTY)


class PricedLine(Line):
    """An order line with its unit price in minor units when the order was placed (None: not
    known — an order placed before lines carried prices, whose price its event cannot tell)."""

    unit_price_cents: int | None = Field(ge=0, le=MAX_INT)


def at_most_max_qty_per_sku(lines: tuple[Line, ...]) -> tuple[Line, ...]:
    """A SKU may span several lines, but its total stays within MAX_QTY (stock is reserved
    per SKU, so the total is what a reservation holds)."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.qty
    over = [sku for sku, qty in totals.items() if qty > MAX_QTY]
    if over:
        raise ValueError(f"{over[0]} adds up to {totals[over[0]]} over its lines; at most {MAX_QTY} per SKU")
    return lines


#: An order's lines (their count bounded where used).
Lines = Annotated[tuple[Line, ...], AfterValidator(at_most_max_qty_per_sku)]


class Address(BaseModel):
    """Where a shipment goes. ``country`` is ISO 3166-1 alpha-2."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Text = Field("Customer", min_length=1, max_length=100)
    line1: Text = Field("1 Main Street", min_length=1, max_length=200)
    city: Text = Field("London", min_length=1, max_length=100)
    postal_code: Text = Field("SW1A 1AA", min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2)

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str) -> str:
        if pycountry.countries.get(alpha_2=value) is None or value != value.upper():
            raise ValueError(f"unknown ISO 3166-1 alpha-2 country code {value!r}")
        return value


class PostalAddress(Address):
    """An address with every field given: no placeholder stands in for a missing one."""

    name: Text = Field(min_length=1, max_length=100)
    line1: Text = Field(min_length=1, max_length=200)
    city: Text = Field(min_length=1, max_length=100)
    postal_code: Text = Field(min_length=1, max_length=20)


DEFAULT_ADDRESS = Address(
    name="Ada Lovelace", line1="12 St James's Square", city="London", postal_code="SW1Y 4JH", country="GB"
)


def money(cents: int, currency: str) -> str:
    """An amount in minor units as people read it: ``1999, "EUR"`` -> ``19.99 EUR``."""
    return f"{cents // 100}.{cents % 100:02d} {currency}"
