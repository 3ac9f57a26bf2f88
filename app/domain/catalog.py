"""The seeded catalog: what the shop sells, at what price, with how much stock.

The order service seeds the prices and the inventory service the stock, each in its own
tables; this module is only the seed data.
"""

from __future__ import annotations

from dataclasses import dataclass

CURRENCY = "EUR"
SUPPORTED_CURRENCIES = frozenset({CURRENCY})


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_cents: int
    initial_stock: int
    currency: str = CURRENCY


CATALOG: tuple[Product, ...] = (
    Product("MUG-01", "Ceramic coffee mug", 1299, 100_000),
    Product("TEE-01", "Organic cotton T-shirt", 2499, 100_000),
    Product("BOOK-01", "Designing Data-Intensive Applications", 4599, 50_000),
    Product("LAMP-01", "Desk lamp", 3999, 20_000),
    Product("POSTER-01", "Limited-edition poster", 1999, 25),
)
