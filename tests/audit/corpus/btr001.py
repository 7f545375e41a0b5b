# ruff: noqa
"""BTR001: HTTP calls without a timeout (requests, httpx timeout=None, urllib)."""

import urllib.request
from urllib.request import urlopen

import httpx
import requests
import requests as rq
from requests import Session

URL = "https://api.example.com"


def positives(kwargs: dict) -> None:
    requests.get(URL)  # expect: BTR001
    requests.post(URL, json={})  # expect: BTR001
    requests.request("GET", URL)  # expect: BTR001
    rq.put(URL, timeout=None)  # expect: BTR001
    urllib.request.urlopen(URL)  # expect: BTR001
    urlopen(URL, None)  # expect: BTR001
    httpx.get(URL, timeout=None)  # expect: BTR001
    httpx.Client(timeout=None)  # expect: BTR001
    httpx.AsyncClient(base_url=URL, timeout=None)  # expect: BTR001
    requests.Session().get(URL)  # expect: BTR001


session = requests.Session()
session.get(URL)  # expect: BTR001


def in_function() -> None:
    s = Session()
    s.post(URL, data=b"")  # expect: BTR001
    with requests.Session() as scoped:
        scoped.delete(URL)  # expect: BTR001


class Client:
    def __init__(self) -> None:
        self.http = requests.Session()

    def fetch(self) -> None:
        self.http.get(URL)  # expect: BTR001
        self.http.get(URL, timeout=5)


def annotated(sess: requests.Session) -> None:
    sess.head(URL)  # expect: BTR001


def negatives(kwargs: dict) -> None:
    requests.get(URL, timeout=5)
    requests.get(URL, timeout=(3.05, 27))
    requests.request("GET", URL, **kwargs)
    urllib.request.urlopen(URL, timeout=10)
    urlopen(URL, None, 10)
    httpx.get(URL)  # httpx has a 5 s default
    httpx.Client()
    httpx.Client(timeout=10)
    client = httpx.Client(timeout=httpx.Timeout(5.0))
    client.get(URL)
    cache = {}
    cache.get("key")  # a dict, not a session
    requests.Session().get(URL, timeout=3)
