"""The security header sets `harden` chooses from (``security_headers=``).

``"api"`` (the default) is OWASP's REST Security Cheat Sheet set; ``"full"`` adds the
browser-facing headers of the OWASP Secure Headers Project.
"""

from buttress.asgi._headers import API_HEADERS, OWASP_HEADERS, SECURITY_PROFILES, SecurityProfile

__all__ = ["API_HEADERS", "OWASP_HEADERS", "SECURITY_PROFILES", "SecurityProfile"]
