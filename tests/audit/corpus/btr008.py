# ruff: noqa
"""BTR008: hand-written retry loops with no sleep, or a constant one."""

import asyncio
import random
import time


def no_sleep(call):
    for attempt in range(5):  # expect: BTR008
        try:
            return call()
        except ConnectionError:
            continue


def constant_sleep(call):
    while True:  # expect: BTR008
        try:
            result = call()
            break
        except ConnectionError:
            time.sleep(1)
    return result


async def async_constant(call):
    for _ in range(3):  # expect: BTR008
        try:
            return await call()
        except OSError:
            await asyncio.sleep(0.5)


def backoff(call):
    for attempt in range(5):
        try:
            return call()
        except ConnectionError:
            time.sleep(min(30, 2**attempt) * random.random())


def reraises(call):
    for attempt in range(3):
        try:
            return call()
        except ConnectionError:
            raise


def worker(queue, handle, log):
    while True:  # a consumer loop, not a retry: no success exit
        try:
            handle(queue.get())
        except Exception:
            log.exception("job failed")
            continue


def per_item(items, handle):
    for i in range(len(items)):  # processing items, not retrying
        try:
            handle(items[i])
        except ValueError:
            continue


def ask(prompt):
    while True:  # re-asking for input, not retrying an external call
        try:
            value = int(input(prompt))
        except ValueError:
            pass
        else:
            return value


def unique_name(make, save):
    while True:  # a new name after a collision: local, not a retry
        try:
            return save(make())
        except FileExistsError:
            continue
