"""Settings of the hardened service."""

ORIGINS = ["https://shop.example.com"]
PRICE_URL = "https://prices.example.com"
