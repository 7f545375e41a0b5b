# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S501.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
import httpx
import requests

requests.get('https://gmail.com', timeout=30, verify=True)
requests.get('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.post('https://gmail.com', timeout=30, verify=True)
requests.post('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.put('https://gmail.com', timeout=30, verify=True)
requests.put('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.delete('https://gmail.com', timeout=30, verify=True)
requests.delete('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.patch('https://gmail.com', timeout=30, verify=True)
requests.patch('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.options('https://gmail.com', timeout=30, verify=True)
requests.options('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.head('https://gmail.com', timeout=30, verify=True)
requests.head('https://gmail.com', timeout=30, verify=False)  # expect: BTR403
requests.request('GET', 'https://gmail.com', timeout=30, verify=True)
requests.request('GET', 'https://gmail.com', timeout=30, verify=False)  # expect: BTR403

httpx.request('GET', 'https://gmail.com', verify=True)
httpx.request('GET', 'https://gmail.com', verify=False)  # expect: BTR403
httpx.get('https://gmail.com', verify=True)
httpx.get('https://gmail.com', verify=False)  # expect: BTR403
httpx.options('https://gmail.com', verify=True)
httpx.options('https://gmail.com', verify=False)  # expect: BTR403
httpx.head('https://gmail.com', verify=True)
httpx.head('https://gmail.com', verify=False)  # expect: BTR403
httpx.post('https://gmail.com', verify=True)
httpx.post('https://gmail.com', verify=False)  # expect: BTR403
httpx.put('https://gmail.com', verify=True)
httpx.put('https://gmail.com', verify=False)  # expect: BTR403
httpx.patch('https://gmail.com', verify=True)
httpx.patch('https://gmail.com', verify=False)  # expect: BTR403
httpx.delete('https://gmail.com', verify=True)
httpx.delete('https://gmail.com', verify=False)  # expect: BTR403
httpx.stream('https://gmail.com', verify=True)
httpx.stream('https://gmail.com', verify=False)  # expect: BTR403
httpx.Client()
httpx.Client(verify=False)  # expect: BTR403
httpx.AsyncClient()
httpx.AsyncClient(verify=False)  # expect: BTR403
