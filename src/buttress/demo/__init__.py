"""The demo: an orders API hardened by buttress, its self-check, and the outbound demo.

* `buttress.demo.app`: the service (``create_app``), served by ``buttress demo``;
* `buttress.demo.selfcheck`: ``buttress demo --selfcheck``, every feature checked over
  real HTTP on loopback;
* `buttress.demo.flaky`: a deliberately flaky local price service, and
  ``buttress resilience-demo``, which calls it with and without a `buttress.Pipeline`.

Nothing here is part of the library's API: it needs the ``demo`` extra (FastAPI, uvicorn,
httpx, rich) and exists to show the rest working.
"""
