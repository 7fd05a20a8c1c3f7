"""Bearer JWTs from an OAuth 2.1 authorization server (the MCP spec's resource-server model).

The signing key comes from exactly one place (settings.py checks it): a JWKS URL (PyJWT's
``PyJWKClient``: the key set is fetched once and cached for ``JWKS_LIFESPAN_SECONDS``, fetched
again when a token names a ``kid`` it does not hold, with a bounded timeout, and at most once per
``JWKS_COOLDOWN_SECONDS`` for unknown kids so garbage tokens cannot make us hammer the issuer), a
PEM public key file, or an HS256 secret (development). ``iss``, ``aud`` and ``exp`` are required
and checked by PyJWT; scopes come from ``scope`` (space-separated, RFC 9068; ``scp`` as a list is
accepted too), the profile from ``pml_profile``.

A token that fails any check verifies to ``None`` (the guard answers 401) and the reason is
logged at INFO without the token. No exception ever leaves ``verify_token``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import jwt as pyjwt
from mcp.server.auth.provider import AccessToken

from pml_gateway.auth.principal import principal_token
from pml_gateway.settings import Settings

log = logging.getLogger(__name__)

JWKS_TIMEOUT_SECONDS = 5.0
JWKS_LIFESPAN_SECONDS = 300.0
JWKS_COOLDOWN_SECONDS = 30.0
#: Asymmetric algorithms accepted with a JWKS or a public key (never "none", never HS* there:
#: a public key used as an HMAC secret is the classic algorithm-confusion attack).
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 30


class JwtVerifier:
    """The SDK's ``TokenVerifier`` for JWTs."""

    def __init__(self, settings: Settings) -> None:
        assert settings.jwt_issuer is not None and settings.jwt_audience is not None  # settings.py checks
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self._jwks: pyjwt.PyJWKClient | None = None
        self._key: Any = None
        if settings.jwt_jwks_url is not None:
            self._jwks = pyjwt.PyJWKClient(
                settings.jwt_jwks_url,
                cache_keys=True,
                lifespan=JWKS_LIFESPAN_SECONDS,
                timeout=JWKS_TIMEOUT_SECONDS,
                cooldown_duration=JWKS_COOLDOWN_SECONDS,
            )
            self.algorithms = ASYMMETRIC
        elif settings.jwt_public_key_file is not None:
            self._key = read_public_key(settings.jwt_public_key_file)
            self.algorithms = ASYMMETRIC
        else:
            assert settings.jwt_secret is not None
            self._key = settings.jwt_secret.get_secret_value()
            self.algorithms = ["HS256"]

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            if self._jwks is not None:
                # The JWKS fetch is blocking I/O (urllib): off the event loop.
                claims = await anyio.to_thread.run_sync(self._decode, token)
            else:
                claims = self._decode(token)
        except pyjwt.PyJWTError as exc:  # bad signature, expired, wrong iss/aud, JWKS unreachable...
            log.info("JWT refused: %s", exc)
            return None
        except Exception as exc:  # a malformed token must never become a traceback
            log.info("JWT refused: %s: %s", type(exc).__name__, exc)
            return None
        name = _first_str(claims, "client_id", "azp", "sub") or "jwt"
        scopes = claims.get("scope")
        scope_list = scopes.split() if isinstance(scopes, str) else []
        scp = claims.get("scp")
        if isinstance(scp, list):
            scope_list += [s for s in scp if isinstance(s, str)]
        profile = claims.get("pml_profile")
        return principal_token(
            token,
            name,
            scope_list,
            profile if isinstance(profile, str) and profile else None,
            kind="jwt",
            expires_at=int(claims["exp"]),
            claims={"iss": claims.get("iss"), "sub": claims.get("sub")},
        )

    def _decode(self, token: str) -> dict[str, Any]:
        key = self._jwks.get_signing_key_from_jwt(token).key if self._jwks is not None else self._key
        return pyjwt.decode(
            token,
            key,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud"]},
        )


def read_public_key(path: Path) -> Any:
    """A PEM public key (or certificate's key); ``ValueError`` naming the setting when unusable."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(path.expanduser().read_bytes())
    except OSError as exc:
        raise ValueError(f"jwt_public_key_file: {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"jwt_public_key_file: {path}: not a PEM public key ({exc})") from None


def _first_str(claims: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None
