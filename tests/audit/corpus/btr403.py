# ruff: noqa
"""BTR403: TLS certificate verification disabled."""

import ssl

import httpx
import requests

URL = "https://internal.example.com"


def positives() -> None:
    requests.get(URL, timeout=5, verify=False)  # expect: BTR403
    httpx.Client(verify=False)  # expect: BTR403
    session = requests.Session()
    session.verify = False  # expect: BTR403
    ssl._create_unverified_context()  # expect: BTR403
    context = ssl.create_default_context()
    context.check_hostname = False  # expect: BTR403
    context.verify_mode = ssl.CERT_NONE  # expect: BTR403


def negatives(report) -> None:
    requests.get(URL, timeout=5, verify="/etc/ssl/private-ca.pem")
    httpx.Client(verify=True)
    report.render(verify=False)  # not an HTTP client
