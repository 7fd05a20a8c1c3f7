"""What authentication costs: verifying each kind of credential, and a request through the gate.

    PYTHONPATH=. .venv/bin/python bench/auth.py            # about 20 s on 2 cores
    PYTHONPATH=. .venv/bin/python bench/auth.py --quick

Prints markdown tables (pasted into bench/README.md, section "Authentication"):

(a) verify: one credential, in process, median of many: an API key against a keys file of N
    keys (SHA-256 and a constant-time compare per record), a JWT (RS256 public key, HS256
    secret, RS256 from a cached JWKS: the key set fetch runs in a worker thread), a stream token,
    and a profile's view of one event on the stream.
(b) http: ``GET /events/stats`` over real uvicorn and httpx, sequential, median and p95 latency:
    authentication off, an API key, an RS256 JWT.
(c) cli: CPU time of ``pml-gateway keys list`` and of ``pml-gateway --help`` (the floor).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from auth_support import AUDIENCE, ISSUER, Signer, jwks_server  # noqa: E402
from server_helpers import make_settings, running_server  # noqa: E402

from graphrag import GraphEvent  # noqa: E402
from graphrag.events import EdgeCreatedData  # noqa: E402
from pml_gateway.auth import KeyStore, Profile  # noqa: E402
from pml_gateway.auth.guard import CredentialVerifier  # noqa: E402
from pml_gateway.auth.jwt import JwtVerifier  # noqa: E402
from pml_gateway.auth.stream_tokens import StreamTokens  # noqa: E402
from pml_gateway.events.hub import encode_event  # noqa: E402
from pml_gateway.events.stream import profile_view  # noqa: E402

SECRET = "a-development-secret-of-32-bytes!"


def table(headers: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


async def median_us(fn: Callable[[], Awaitable[object]], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


async def verify_section(tmp: Path, n: int) -> None:
    rows = []
    for count in (1, 100, 1000):
        store = KeyStore(tmp / f"keys-{count}.json")
        keys = [store.create(f"k{i}", ["mcp"]) for i in range(count)]
        verifier = CredentialVerifier(store, None)
        last = keys[-1]
        rows.append([f"API key, {count} in the file", f"{await median_us(lambda: verifier.verify_token(last), n):.1f} µs"])
    signer = Signer("k1")
    pem = tmp / "signer.pem"
    pem.write_bytes(signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rs = JwtVerifier(make_settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_public_key_file=pem))
    token = signer.token(scope="mcp")
    rows.append(["JWT RS256, public key file", f"{await median_us(lambda: rs.verify_token(token), n):.1f} µs"])
    hs = JwtVerifier(make_settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_secret=SECRET))
    hs_token = pyjwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 600, "scope": "mcp"},
                            SECRET, algorithm="HS256")
    rows.append(["JWT HS256, secret", f"{await median_us(lambda: hs.verify_token(hs_token), n):.1f} µs"])
    with jwks_server(signer) as (url, _):
        jw = JwtVerifier(make_settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_jwks_url=url))
        await jw.verify_token(token)  # fetch and cache the key set
        rows.append(["JWT RS256, cached JWKS (worker thread)", f"{await median_us(lambda: jw.verify_token(token), n):.1f} µs"])
    tokens = StreamTokens()
    principal = await rs.verify_token(token)
    assert principal is not None
    stream_token = tokens.mint(principal)

    async def verify_stream() -> object:
        return tokens.verify(stream_token)

    rows.append(["stream token", f"{await median_us(verify_stream, n):.1f} µs"])
    view = profile_view(Profile(name="p", tools=("a__*",)))
    assert view is not None
    frame = encode_event(GraphEvent.of(EdgeCreatedData(from_tool_id="a__x", to_tool_id="a__y", confidence_score=0.5,
                                                       observed_count=1, edge_type="sequence"), id=1))

    async def filter_frame() -> object:
        return view(frame)

    rows.append(["profile view of one stream event (per profile client)", f"{await median_us(filter_frame, n):.1f} µs"])
    table(["credential", "median per verification"], rows)


async def http_section(tmp: Path, n: int) -> None:
    signer = Signer("k1")
    pem = tmp / "http-signer.pem"
    pem.write_bytes(signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rows = []
    off = make_settings(keys_file=tmp / "none.json")
    store = KeyStore(tmp / "http-keys.json")
    key = store.create("bench", ["admin"])
    on = make_settings(keys_file=tmp / "http-keys.json", jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_public_key_file=pem)
    for label, settings, token in (
        ("auth off", off, None),
        ("API key", on, key),
        ("JWT RS256", on, signer.token(scope="events:read", expires_in=3600)),
    ):
        async with running_server(settings) as running, httpx.AsyncClient() as http:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            url = f"{running.base_url}/events/stats"
            for _ in range(20):
                assert (await http.get(url, headers=headers)).status_code == 200
            times = []
            for _ in range(n):
                start = time.perf_counter()
                await http.get(url, headers=headers)
                times.append(time.perf_counter() - start)
            times.sort()
            rows.append([label, f"{statistics.median(times) * 1000:.2f} ms", f"{times[int(len(times) * 0.95)] * 1000:.2f} ms"])
    table(["GET /events/stats", "median", "p95"], rows)


def cli_section(runs: int) -> None:
    rows = []
    for label, args in (("pml-gateway keys list", ["keys", "list", "--keys-file", "/nonexistent/keys.json"]),
                        ("pml-gateway --help", ["--help"])):
        cpu = []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "pml_gateway", *args], capture_output=True, check=False,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        rows.append([label, f"{statistics.median(cpu):.2f} s"])
    table(["command", "CPU time (median)"], rows)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    n = 200 if options.quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        print("### (a) verify\n")
        await verify_section(Path(tmp), n)
        print("### (b) http\n")
        await http_section(Path(tmp), 100 if options.quick else 500)
    print("### (c) cli\n")
    cli_section(3 if options.quick else 5)


if __name__ == "__main__":
    anyio.run(main)
