"""Short-lived stream tokens for browsers: ``POST /events/token`` -> ``?access_token=``.

``EventSource`` cannot send an ``Authorization`` header, and a long-lived API key or JWT must
never sit in a URL (access logs, browser history, referrers). So an authenticated client trades
its credential for a token that is valid for ``TTL_SECONDS``, only on the event stream routes,
and carries the same principal, scopes and profile. It is an HS256 JWT signed with a random
secret made when the process starts and never stored: it is worthless to another process or
after a restart (the page asks again), and no API key or JWT verifies against it, so one of those
in the URL is refused.
"""

from __future__ import annotations

import logging
import secrets
import time

import jwt as pyjwt
from mcp.server.auth.provider import AccessToken

from pml_gateway.auth.principal import principal_token, profile_name
from pml_gateway.auth.scopes import EVENTS_READ

log = logging.getLogger(__name__)

TTL_SECONDS = 300
AUDIENCE = "pml-gateway:events-stream"


class StreamTokens:
    def __init__(self, ttl_seconds: int = TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._secret = secrets.token_bytes(32)

    def mint(self, principal: AccessToken) -> str:
        """A token for ``principal``'s event streams (only ``events:read`` carries over)."""
        now = int(time.time())
        expires = now + self.ttl_seconds
        if principal.expires_at is not None:
            expires = min(expires, principal.expires_at)  # never outlives the credential it came from
        claims = {
            "sub": principal.client_id,
            "aud": AUDIENCE,
            "iat": now,
            "exp": expires,
            "scope": EVENTS_READ,
            "pml_profile": profile_name(principal),
            "jti": secrets.token_urlsafe(8),
        }
        return pyjwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> AccessToken | None:
        try:
            claims = pyjwt.decode(
                token, self._secret, algorithms=["HS256"], audience=AUDIENCE, options={"require": ["exp", "sub"]}
            )
        except pyjwt.PyJWTError as exc:
            log.info("stream token refused: %s", exc)
            return None
        profile = claims.get("pml_profile")
        return principal_token(
            token, str(claims["sub"]), [EVENTS_READ], profile if isinstance(profile, str) else None,
            kind="stream", expires_at=int(claims["exp"]),
        )
