"""The HTTP metrics `harden` serves on ``/metrics`` (Prometheus text or OpenMetrics).

`HttpMetrics` is the recorder (requests, latency, in flight, shed and limited answers);
`RequestMetrics` is one request's handle on it.
"""

from buttress.asgi._metrics import HttpMetrics, RequestMetrics

__all__ = ["HttpMetrics", "RequestMetrics"]
