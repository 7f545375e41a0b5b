"""What uvicorn serves: the app, hardened by buttress (uvicorn app.asgi:application)."""

from app.main import app
from buttress.asgi import harden

application = harden(app)
