# ruff: noqa
"""BTR601: no health endpoint (routes on an included router; metrics through an exporter)."""

from fastapi import APIRouter, FastAPI
from prometheus_fastapi_instrumentator import Instrumentator


class RequestSizeLimitMiddleware: ...


async def lifespan(app): ...


app = FastAPI(lifespan=lifespan)  # expect: BTR601
app.add_middleware(RequestSizeLimitMiddleware)
Instrumentator().instrument(app).expose(app)
router = APIRouter()


@router.get("/items")
def items() -> list:
    return []


app.include_router(router)
