# ruff: noqa
"""BTR501: print in service code."""

import logging

logger = logging.getLogger(__name__)


def handle(order_id: int) -> None:
    print("handling", order_id)  # expect: BTR501
    logger.info("handling %s", order_id)


def report() -> None:
    print(f"done")  # expect: BTR501
