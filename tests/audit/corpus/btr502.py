# ruff: noqa
"""BTR502: f-string log messages."""

import logging

import structlog

logger = logging.getLogger(__name__)
log = structlog.get_logger()
audit_trail = logging.getLogger("audit")


class Service:
    def __init__(self) -> None:
        self.logger = logging.getLogger("service")

    def run(self, order_id: int) -> None:
        self.logger.warning(f"order {order_id} late")  # expect: BTR502


def positives(order_id: int, error: Exception) -> None:
    logger.info(f"created order {order_id}")  # expect: BTR502
    logging.error(f"failed: {error}")  # expect: BTR502
    log.info(f"order {order_id}")  # expect: BTR502
    audit_trail.info("order {}".format(order_id))  # expect: BTR502
    logger.log(logging.INFO, f"order {order_id}")  # expect: BTR502


def negatives(order_id: int, items: dict) -> None:
    logger.info("created order %s", order_id)
    log.info("order created", order_id=order_id)
    logger.info(f"constant message")
    items.get(f"key-{order_id}")
    message = f"order {order_id}"
    logger.info(message)
