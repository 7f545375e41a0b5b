"""The app: routes and CORS (hardened in app/asgi.py)."""

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import settings
from app.routes import router

app = FastAPI(title="orders")
app.add_middleware(CORSMiddleware, allow_origins=settings.ORIGINS)
app.include_router(router)
