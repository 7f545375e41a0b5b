# ruff: noqa
"""BTR405: hardcoded secrets, with few false positives."""

import os

API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # expect: BTR405
SECRET_KEY = "django-insecure-9f#k2@x!q8v$w3z&m1n7p0r6t5y4u"  # expect: BTR405
DB_PASSWORD = "Tr0ub4dor&3"  # expect: BTR405
GITHUB = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"  # expect: BTR405
config = {"client_secret": "a8f5f167f44f4964e6c998dee827110c"}  # expect: BTR405
fallback = os.getenv("API_TOKEN", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5")  # expect: BTR405


def connect(password: str = "s3cr3t-P4ss!") -> None:  # expect: BTR405
    pass


class Settings:
    auth_token: str = "8f14e45fceea167a5a36dedd4bea2543"  # expect: BTR405


token_type = "bearer"
TOKEN_URL = "https://auth.example.com/token"
password = ""
api_key = "changeme"
SECRET = "your-secret-here"
PASSWORD_ENV = "DB_PASSWORD"
password_field = "password"
API_KEY_HEADER = "X-API-Key"
secret_name = "prod/db/password"
token = os.environ["API_TOKEN"]
db_password = os.getenv("DB_PASSWORD", "")
password_prompt = "Enter your password: "
access_key = "<access-key>"
secret_key = "${SECRET_KEY}"
password_min_length = 12
token = "xxxxxxxxxxxxxxxx"
PUSH_CREDENTIALS = "aggregator.utils.push_credentials"  # a dotted import path (django-push)


def lookups(SECRETS: dict) -> None:
    if "recaptcha_private_key" in SECRETS:  # a lookup by name, not a comparison
        pass
