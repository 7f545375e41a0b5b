# ruff: noqa
"""BTR301: bare except."""

import logging

logger = logging.getLogger(__name__)


def positives() -> None:
    try:
        pass
    except:  # expect: BTR301
        pass
    try:
        pass
    except:  # expect: BTR301
        logger.exception("failed")


def negatives() -> None:
    try:
        pass
    except:
        logger.warning("cleaning up")
        raise
    try:
        pass
    except ValueError:
        logger.exception("bad value")
