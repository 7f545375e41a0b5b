# ruff: noqa
"""BTR302: exceptions silently swallowed."""

import contextlib
import logging

from fastapi import FastAPI

logger = logging.getLogger(__name__)
app = FastAPI()


def broad() -> None:
    try:
        pass
    except Exception:  # expect: BTR302
        pass
    for _ in range(3):
        try:
            pass
        except (ValueError, Exception):  # expect: BTR302
            continue
    try:
        pass
    except BaseException:  # expect: BTR302
        ...
    with contextlib.suppress(Exception):  # expect: BTR302
        pass


@app.get("/items/{item_id}")
def handler(item_id: str) -> dict:
    try:
        int(item_id)
    except ValueError:  # expect: BTR302
        pass
    return {}


def not_a_handler(value: str) -> None:
    try:
        int(value)
    except ValueError:
        pass
    with contextlib.suppress(FileNotFoundError):
        pass
    try:
        pass
    except Exception:
        logger.exception("logged")


class Pool:
    def release(self, conn, stats) -> None:
        with contextlib.suppress(Exception):  # best-effort teardown
            conn.close()
        try:
            conn.disconnect()
        except Exception:
            pass
        try:
            stats.flush_all()
            conn.send(b"bye")
        except Exception:  # expect: BTR302
            pass
