"""`buttress._urls`: the one place that decides what of a URL is shown."""

from __future__ import annotations

import doctest

import buttress._urls
from buttress._urls import masked, redacted


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(buttress._urls).failed == 0


def test_masked_never_shows_a_password_and_hides_what_is_not_a_url() -> None:
    assert masked("postgresql://app:p%40ss@db:5432/orders") == "postgresql://app:***@db:5432/orders"
    assert masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert masked("host=db password=s3cret") == "<not a URL>"
    assert masked("http://[::1") == "<a malformed URL>"


def test_redacted_keeps_host_port_path_and_query_names_only() -> None:
    assert (
        redacted("https://u:pw@[::1]:8443/x?a=1&token=t#frag")
        == "https://[::1]:8443/x?a=***&token=***"
    )
    assert redacted("http://127.0.0.1:99999/") == "(an invalid URL)"
