"""The orders API."""

from fastapi import APIRouter
from pydantic import BaseModel

from app.clients import price

router = APIRouter()
ORDERS: dict[int, dict] = {}


class OrderIn(BaseModel):
    sku: str
    quantity: int


@router.get("/orders")
def list_orders() -> list[dict]:
    return list(ORDERS.values())


@router.post("/orders")
def create_order(order: OrderIn) -> dict:
    created = {"id": len(ORDERS) + 1, "sku": order.sku, "price": price(order.sku)}
    ORDERS[created["id"]] = created
    return created
