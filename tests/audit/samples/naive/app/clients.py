"""Calls to the price service."""

import requests

from app.settings import PRICE_URL


def price(sku: str) -> float:
    return float(requests.get(f"{PRICE_URL}/{sku}").json()["price"])
