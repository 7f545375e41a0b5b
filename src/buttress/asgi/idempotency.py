"""``Idempotency-Key`` handling: the modes (per app, per route) and the key's syntax."""

from buttress.asgi._idempotency import IdempotencyMode, parse_idempotency_key

__all__ = ["IdempotencyMode", "parse_idempotency_key"]
