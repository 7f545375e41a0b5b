# Vendored from https://github.com/semgrep/semgrep-rules python/requests/best-practice/use-timeout.py at 157ae4706d7f54aa33647332f234dd68f30da195.
# Copyright (c) Semgrep, Inc., LGPL 2.1 with the Commons Clause (see LICENSE-semgrep-rules).
# Unchanged below this header: semgrep's own test file, with its ruleid and ok annotations.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
import requests

url = "www.github.com"

# ruleid: use-timeout
r = requests.get(url)

# ruleid: use-timeout
r = requests.post(url)

# ok: use-timeout
r = requests.get(url, timeout=50)


def from_import_test1(url):
    from requests import get, post

    # ok: use-timeout
    r = get(url, timeout=3)

    # ruleid: use-timeout
    r = post(url)


def test2():
    """Perform a requests.get and default headers set"""
    headers = {**_get_default_headers(), **headers}
    # ok: use-timeout
    r = requests.get(
        url, headers=headers, params=params, **{"timeout": TIMEOUT, **kwargs}
    )
    return r


def test3():
    session = requests.Session()
    # ruleid: use-timeout
    r = session.get(get_url())

    # ok: use-timeout
    r = session.get(url, timeout=3)
