"""What the auth tests share: a test-made RSA key served as JWKS by a small local HTTP server,
token minting, and an ``httpx2`` client carrying a bearer credential for the MCP SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://issuer.test"
AUDIENCE = "pml-gateway-tests"


class Signer:
    """An RSA key pair with a ``kid``, as an authorization server has."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(self, *, scope: str = "mcp", expires_in: int = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "client_id": "agent-1", "iat": now,
                   "exp": now + expires_in, "scope": scope, **claims}
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": self.kid})


@contextmanager
def jwks_server(*signers: Signer) -> Iterator[tuple[str, list[str]]]:
    """Serves ``/jwks.json`` on 127.0.0.1; yields its URL and the list of paths requested."""
    requests: list[str] = []
    body = json.dumps({"keys": [s.jwk() for s in signers]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", requests
    finally:
        server.shutdown()
        server.server_close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sdk_http(token: str) -> httpx2.AsyncClient:
    """The HTTP client to hand to ``streamable_http_client`` so the SDK sends the credential."""
    return httpx2.AsyncClient(headers=bearer(token), timeout=30)
