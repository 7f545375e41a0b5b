# ruff: noqa
"""BTR404: SQL built from strings."""

import sqlite3

import queries
from django.db.models.expressions import RawSQL
from sqlalchemy import text

TABLE = "orders"
db = sqlite3.connect(":memory:")
cur = db.cursor()


def positives(user_id: str, name: str, ids: list[int]) -> None:
    cur.execute(f"SELECT * FROM users WHERE id = {user_id}")  # expect: BTR404
    cur.execute("SELECT * FROM users WHERE name = '%s'" % name)  # expect: BTR404
    cur.execute("DELETE FROM users WHERE id = " + user_id)  # expect: BTR404
    cur.execute("UPDATE users SET name = '{}'".format(name))  # expect: BTR404
    db.executescript(f"DROP TABLE {name}")  # expect: BTR404
    text(f"SELECT * FROM t WHERE x = {name}")  # expect: BTR404
    query = f"SELECT * FROM users WHERE name = '{name}'"
    cur.execute(query)  # expect: BTR404
    RawSQL("SELECT age FROM person WHERE name = '%s'" % name)  # expect: BTR404
    Person.objects.extra(where=["name = %s" % name])  # expect: BTR404
    cur.execute(queries.BY_NAME.format(name))  # expect: BTR404


async def driver_positives(conn, name: str) -> None:
    await conn.fetch("SELECT * FROM users WHERE name = '" + name + "'")  # expect: BTR404
    await conn.fetchrow(f"SELECT * FROM users WHERE name = '{name}'")  # expect: BTR404


def negatives(user_id: str, ids: list[int]) -> None:
    cur.execute("SELECT * FROM users WHERE id = ?", (user_id,))
    cur.execute(f"SELECT * FROM {TABLE} WHERE id = ?", (user_id,))
    cur.execute(f"SELECT * FROM t WHERE id IN ({', '.join('?' * len(ids))})", ids)
    cur.execute("SELECT 1")
    cur.execute(f"SELECT * FROM {TABLE}")
    text("SELECT * FROM t WHERE x = :x")
    print_like = f"hello {user_id}"  # not SQL
    cur.execute("SELECT * FROM users WHERE age=" + "3")  # constants only
    cur.execute(queries.BY_NAME.format(table=TABLE))  # a constant filled in
    Person.objects.extra(where=["name = %s"], params=[user_id])
