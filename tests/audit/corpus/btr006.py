# ruff: noqa
"""BTR006: SQLAlchemy engines without pool_timeout and pool_pre_ping."""

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

URL = "postgresql+psycopg://app@db/app"

engine = create_engine(URL)  # expect: BTR006
other = create_engine(URL, pool_pre_ping=True)  # expect: BTR006
aengine = create_async_engine("postgresql+asyncpg://app@db/app", pool_timeout=5)  # expect: BTR006

good = create_engine(URL, pool_timeout=10, pool_pre_ping=True)
local = create_engine("sqlite:///app.db")  # no network, no server pool
nopool = create_engine(URL, poolclass=NullPool)
