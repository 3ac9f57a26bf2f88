"""Value types shared by events, commands and the API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

import pycountry

MAX_QTY = 1000
MAX_LINES = 100


class Line(BaseModel):
    """One order line: a SKU and a quantity (1..1000)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    sku: str = Field(min_length=1, max_length=32)
    qty: int = Field(ge=1, le=MAX_QTY)


class Address(BaseModel):
    """Where a shipment goes. ``country`` is ISO 3166-1 alpha-2."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field("Customer", min_length=1, max_length=100)
    line1: str = Field("1 Main Street", min_length=1, max_length=200)
    city: str = Field("London", min_length=1, max_length=100)
    postal_code: str = Field("SW1A 1AA", min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2)

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str) -> str:
        if pycountry.countries.get(alpha_2=value) is None or value != value.upper():
            raise ValueError(f"unknown ISO 3166-1 alpha-2 country code {value!r}")
        return value


DEFAULT_ADDRESS = Address(
    name="Ada Lovelace", line1="12 St James's Square", city="London", postal_code="SW1Y 4JH", country="GB"
)
