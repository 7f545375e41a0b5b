# ruff: noqa
"""BTR004: aiohttp, smtplib and socket clients without a timeout."""

import smtplib
import socket

import aiohttp
from aiohttp import ClientSession, ClientTimeout

TIMEOUT = ClientTimeout(total=10)


async def bad(url: str) -> None:
    async with aiohttp.ClientSession() as session:  # expect: BTR004
        await session.get(url)
    session = ClientSession(timeout=None)  # expect: BTR004
    async with aiohttp.request("GET", url) as resp:  # expect: BTR004
        await resp.text()


def bad_sync() -> None:
    smtplib.SMTP("mail.example.com", 25)  # expect: BTR004
    smtplib.SMTP_SSL("mail.example.com")  # expect: BTR004
    socket.create_connection(("db", 5432))  # expect: BTR004


async def good(url: str, **options: object) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        await session.get(url)
    ClientSession(timeout=ClientTimeout(total=5))
    ClientSession(**options)
    async with aiohttp.request("GET", url, timeout=TIMEOUT) as resp:
        await resp.text()
    smtplib.SMTP("mail.example.com", 25, timeout=10)
    smtplib.SMTP("mail.example.com", 25, None, 10)
    socket.create_connection(("db", 5432), 5)
    socket.create_connection(("db", 5432), timeout=5)
