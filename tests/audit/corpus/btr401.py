# ruff: noqa
"""BTR401: CORS allowing every origin, also through constants, imports and settings."""

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from flask import Flask
from flask_cors import CORS
from starlette.middleware import Middleware

from buttress.asgi import HardenSettings
from cors_settings.config import ALLOWED, TRUSTED, settings

ORIGINS = ["*"]
SAFE = ["https://app.example.com"]

app = FastAPI()
app.add_middleware(CORSMiddleware, allow_origins=["*"])  # expect: BTR401
app.add_middleware(CORSMiddleware, allow_origins=ORIGINS)  # expect: BTR401
app.add_middleware(CORSMiddleware, allow_origins=ALLOWED)  # expect: BTR401
app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins)  # expect: BTR401
app.add_middleware(CORSMiddleware, allow_origin_regex=".*")  # expect: BTR401
middleware = [Middleware(CORSMiddleware, allow_origins=("*",))]  # expect: BTR401
hardened = HardenSettings(cors_origins=("*",))  # expect: BTR401

flask_app = Flask(__name__)
CORS(flask_app)  # expect: BTR401
CORS(flask_app, origins="*")  # expect: BTR401
CORS(flask_app, resources={r"/api/*": {"origins": "*"}})  # expect: BTR401

app.add_middleware(CORSMiddleware, allow_origins=SAFE)
app.add_middleware(CORSMiddleware, allow_origins=TRUSTED)
app.add_middleware(CORSMiddleware, allow_origins=settings.other_origins)
app.add_middleware(CORSMiddleware, allow_origins=["https://app.example.com"])
CORS(flask_app, origins=["https://app.example.com"])
safe_settings = HardenSettings(cors_origins=("https://app.example.com",))
