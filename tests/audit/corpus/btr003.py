# ruff: noqa
"""BTR003: retries without backoff or stop."""

import tenacity
from tenacity import retry, stop_after_attempt, wait_exponential_jitter
from urllib3.util.retry import Retry


@retry  # expect: BTR003
def bare() -> None: ...


@retry()  # expect: BTR003
def empty_call() -> None: ...


@tenacity.retry(stop=stop_after_attempt(3))  # expect: BTR003
def no_wait() -> None: ...


@retry(wait=wait_exponential_jitter())  # expect: BTR003
def no_stop() -> None: ...


@retry(wait=wait_exponential_jitter(), stop=stop_after_attempt(3))
def good() -> None: ...


retrying = tenacity.Retrying()  # expect: BTR003
ok_retrying = tenacity.Retrying(wait=tenacity.wait_fixed(1), stop=stop_after_attempt(2))
adapter_retry = Retry(total=3)  # expect: BTR003
adapter_retry_zero = Retry(total=3, backoff_factor=0)  # expect: BTR003
adapter_ok = Retry(total=3, backoff_factor=0.5)
no_retries = Retry(total=0)
