"""What uvicorn serves: the app, hardened by buttress (uvicorn app.asgi:application)."""

from app.main import app
from buttress.asgi import Limit, RateLimitRule, harden

ORDER_LIMITS = [RateLimitRule(Limit("orders", "5/minute"), path="/orders", methods=["POST"])]

application = harden(app, rate_limits=ORDER_LIMITS)
