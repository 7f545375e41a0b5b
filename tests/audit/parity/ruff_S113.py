# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S113.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
import httpx
import requests

# OK
requests.get('https://gmail.com', timeout=5)
requests.post('https://gmail.com', timeout=5)
requests.put('https://gmail.com', timeout=5)
requests.delete('https://gmail.com', timeout=5)
requests.patch('https://gmail.com', timeout=5)
requests.options('https://gmail.com', timeout=5)
requests.head('https://gmail.com', timeout=5)

httpx.get('https://gmail.com', timeout=5)
httpx.post('https://gmail.com', timeout=5)
httpx.put('https://gmail.com', timeout=5)
httpx.delete('https://gmail.com', timeout=5)
httpx.patch('https://gmail.com', timeout=5)
httpx.options('https://gmail.com', timeout=5)
httpx.head('https://gmail.com', timeout=5)
httpx.Client(timeout=5)
httpx.AsyncClient(timeout=5)
with httpx.Client(timeout=5) as client:
    client.get('https://gmail.com')
async def foo():
    async with httpx.AsyncClient(timeout=5) as client:
        await client.get('https://gmail.com')

httpx.get('https://gmail.com')
httpx.post('https://gmail.com')
httpx.put('https://gmail.com')
httpx.delete('https://gmail.com')
httpx.patch('https://gmail.com')
httpx.options('https://gmail.com')
httpx.head('https://gmail.com')
httpx.Client()
httpx.AsyncClient()

async def bar():
    async with httpx.AsyncClient() as client:
        await client.get('https://gmail.com')

with httpx.Client() as client:
    client.get('https://gmail.com')

# Errors
requests.get('https://gmail.com')  # expect: BTR001
requests.get('https://gmail.com', timeout=None)  # expect: BTR001
requests.post('https://gmail.com')  # expect: BTR001
requests.post('https://gmail.com', timeout=None)  # expect: BTR001
requests.put('https://gmail.com')  # expect: BTR001
requests.put('https://gmail.com', timeout=None)  # expect: BTR001
requests.delete('https://gmail.com')  # expect: BTR001
requests.delete('https://gmail.com', timeout=None)  # expect: BTR001
requests.patch('https://gmail.com')  # expect: BTR001
requests.patch('https://gmail.com', timeout=None)  # expect: BTR001
requests.options('https://gmail.com')  # expect: BTR001
requests.options('https://gmail.com', timeout=None)  # expect: BTR001
requests.head('https://gmail.com')  # expect: BTR001
requests.head('https://gmail.com', timeout=None)  # expect: BTR001

httpx.get('https://gmail.com', timeout=None)  # expect: BTR001
httpx.post('https://gmail.com', timeout=None)  # expect: BTR001
httpx.put('https://gmail.com', timeout=None)  # expect: BTR001
httpx.delete('https://gmail.com', timeout=None)  # expect: BTR001
httpx.patch('https://gmail.com', timeout=None)  # expect: BTR001
httpx.options('https://gmail.com', timeout=None)  # expect: BTR001
httpx.head('https://gmail.com', timeout=None)  # expect: BTR001
httpx.Client(timeout=None)  # expect: BTR001
httpx.AsyncClient(timeout=None)  # expect: BTR001

with httpx.Client(timeout=None) as client:  # expect: BTR001
    client.get('https://gmail.com')
