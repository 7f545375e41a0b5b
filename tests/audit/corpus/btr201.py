# ruff: noqa
"""BTR201: unbounded caches."""

import functools
from functools import cache, lru_cache


@functools.lru_cache(maxsize=None)  # expect: BTR201
def lookup(key: str) -> str:
    return key


@lru_cache(None)  # expect: BTR201
def positional_none(key: str) -> str:
    return key


@cache  # expect: BTR201
def cached(user_id: int) -> int:
    return user_id


@functools.cache  # expect: BTR201
def cached_too(*args: int) -> int:
    return 0


@lru_cache(maxsize=1024)
def bounded(key: str) -> str:
    return key


@lru_cache
def default_bound(key: str) -> str:  # lru_cache's default maxsize is 128
    return key


@cache
def get_settings() -> dict:  # no parameters: one entry
    return {}


class Service:
    @functools.cache
    def config(self) -> dict:  # only self
        return {}
