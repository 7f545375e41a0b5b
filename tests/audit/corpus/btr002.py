# ruff: noqa
"""BTR002: Redis clients without socket_timeout."""

import redis
import redis.asyncio as aioredis
from redis import Redis

REDIS_URL = "redis://localhost:6379/0"

r1 = redis.Redis(host="localhost")  # expect: BTR002
r2 = Redis.from_url(REDIS_URL)  # expect: BTR002
r3 = redis.from_url(REDIS_URL)  # expect: BTR002
r4 = aioredis.from_url(REDIS_URL)  # expect: BTR002
r5 = redis.StrictRedis(socket_timeout=None)  # expect: BTR002
r6 = aioredis.Redis()  # expect: BTR002

ok1 = redis.Redis(host="localhost", socket_timeout=5, socket_connect_timeout=2)
ok2 = Redis.from_url(REDIS_URL, socket_timeout=2.0)
ok3 = redis.from_url("redis://localhost:6379/0?socket_timeout=2")
ok4 = redis.Redis(connection_pool=redis.ConnectionPool(socket_timeout=1))


def configured(options: dict) -> redis.Redis:
    return redis.Redis(**options)
