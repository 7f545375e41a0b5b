# ruff: noqa
"""Constants imported by btr401.py (the value reaches allow_origins through an import)."""

from pydantic_settings import BaseSettings

ALLOWED = ["*"]
TRUSTED = ["https://shop.example.com"]


class Settings(BaseSettings):
    cors_origins: list[str] = ["*"]
    other_origins: list[str] = ["https://a.example.com"]


settings = Settings()
