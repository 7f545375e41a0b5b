"""Settings of the naive service."""

ORIGINS = ["*"]
PRICE_URL = "https://prices.example.com"
