"""Calls to the price service, with a timeout."""

import requests

from app.settings import PRICE_URL


def price(sku: str) -> float:
    return float(requests.get(f"{PRICE_URL}/{sku}", timeout=(3.05, 10)).json()["price"])
