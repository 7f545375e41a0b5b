# ruff: noqa
"""BTR303: broad except that neither logs nor re-raises."""

import logging
import sys

import sentry_sdk

logger = logging.getLogger(__name__)


def positives() -> int:
    try:
        return 1
    except Exception:  # expect: BTR303
        return 0


def fallback() -> dict:
    try:
        return {}
    except Exception:  # expect: BTR303
        value = None
    return {"value": value}


def negatives() -> object:
    try:
        return 1
    except Exception:
        logger.exception("failed")
        return 0
    try:
        return 1
    except Exception as exc:
        raise RuntimeError("wrapped") from exc
    try:
        return 1
    except Exception as exc:
        errors = [exc]
        return errors
    try:
        return 1
    except Exception:
        sentry_sdk.capture_exception()
        return None
    try:
        return 1
    except Exception:
        sys.exit(1)
    try:
        return 1
    except KeyError:
        return None


def counted(result, call) -> None:
    try:
        call()
    except Exception:
        result.errors += 1
    try:
        call()
    except Exception:  # expect: BTR303
        result.total += 1
