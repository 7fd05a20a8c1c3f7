"""Hostile input at the HTTP door: refused with one JSON message naming the problem, never learned.

Each case here was a defect found by fault injection (issue 15): non-finite numbers that poisoned
replay, bodies that froze the loop, foreign Host headers and text/plain POSTs from web pages,
tracebacks for deep JSON, plain-text 404s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest

from server_helpers import make_settings, running_app, running_server

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, content: bytes | str, **headers: str) -> httpx.Response:
    return await client.post(
        "/executions", content=content, headers={"content-type": "application/json", **headers}
    )


async def test_non_finite_numbers_are_refused_at_the_door() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for number in ("Infinity", "-Infinity", "NaN", "1e400"):
            body = '{"tool_ids": ["a", "b"], "execution_time_ms": %s}' % number
            answer = await post(client, body)
            assert answer.status_code == 400, (number, answer.text)
            assert "Malformed JSON body" in answer.json()["error"]
        graph = (await client.get("/graph")).json()
        assert graph["edges"] == []  # nothing was learned


async def test_text_plain_posts_need_a_preflight_so_they_are_refused() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.post("/executions", content='{"tool_ids": ["a", "b"]}', headers={"content-type": "text/plain"})
        assert answer.status_code == 415
        assert answer.json() == {"error": "Content-Type must be application/json"}


async def test_deep_json_and_odd_ids_give_one_line_not_a_traceback() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        deep = "[" * 100_000 + "]" * 100_000
        answer = await post(client, deep)
        assert answer.status_code == 400
        assert answer.json()["error"] == "Malformed JSON body: nested too deeply"
        for tool_id in ("a\u200bb", "x\u202ey", "nul\x00"):
            answer = await post(client, _json({"tool_ids": ["ok", tool_id]}))
            assert answer.status_code == 422
            error = answer.json()
            assert error["errors"][0]["field"] == "tool_ids.1"
            assert "character U+" in error["error"]


def _json(value: Any) -> str:
    return json.dumps(value)


async def test_every_problem_is_reported_with_its_field() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        body = {"workflow_id": "", "tasks": [{"id": "a", "tool_id": ""}], "execution_time_ms": -1, "colour": 1}
        answer = await post(client, _json(body))
        assert answer.status_code == 422
        fields = {error["field"] for error in answer.json()["errors"]}
        assert {"workflow_id", "tasks.0.tool_id", "execution_time_ms", "colour"} <= fields
        assert "" not in fields
        assert "more)" in answer.json()["error"]


async def test_limits_answer_413_naming_the_setting() -> None:
    settings = make_settings(max_tasks_per_execution=10, max_executions_per_request=3, max_dependencies_per_task=2)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answer = await post(client, _json({"tool_ids": [f"t{i}" for i in range(11)]}))
        assert answer.status_code == 413 and "max_tasks_per_execution" in answer.json()["error"]
        answer = await post(client, _json([{"tool_ids": ["a"]}] * 4))
        assert answer.status_code == 413 and "max_executions_per_request" in answer.json()["error"]
        tasks = [{"id": f"t{i}", "tool_id": "x"} for i in range(4)]
        tasks[3]["depends_on"] = ["t0", "t1", "t2"]
        answer = await post(client, _json({"tasks": tasks}))
        assert answer.status_code == 413 and "tasks.3.depends_on" in answer.json()["error"]


async def test_a_large_batch_does_not_starve_other_requests() -> None:
    settings = make_settings(max_executions_per_request=5_000)
    batch = [{"tool_ids": [f"tool{i % 97}", f"tool{(i * 7) % 97}", f"tool{(i * 13) % 97}"]} for i in range(5_000)]
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        latencies: list[float] = []
        done = anyio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                latencies.append(time.perf_counter() - started)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            with anyio.fail_after(60):
                answer = await post(client, _json(batch))
            done.set()
        assert answer.status_code == 202 and len(answer.json()["workflow_ids"]) == 5_000
        assert latencies  # /health was answered while the batch was learned, not only after it


@pytest.mark.parametrize("path", ["/graph", "/events/stats", "/health"])
async def test_foreign_host_headers_are_refused_on_every_route(path: str) -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.get(path, headers={"host": "evil.example"})
        assert answer.status_code == 421
        assert "allowed_hosts" in answer.json()["error"]
        assert (await client.get(path)).status_code == 200


async def test_cross_site_writes_are_refused_and_allowed_hosts_extend_the_list() -> None:
    settings = make_settings(allowed_hosts="gateway.internal")
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answer = await post(client, _json({"tool_ids": ["a", "b"]}), origin="http://evil.example")
        assert answer.status_code == 403 and "cors_origins" in answer.json()["error"]
        answer = await post(client, _json({"tool_ids": ["a", "b"]}), origin="http://localhost:3000")
        assert answer.status_code == 202
        answer = await client.get("/graph", headers={"host": "gateway.internal:8443"})
        assert answer.status_code == 200


async def test_a_wildcard_bind_keeps_the_host_check_on() -> None:
    settings = make_settings(host="0.0.0.0")
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url.replace("0.0.0.0", "127.0.0.1")) as client:
        assert (await client.get("/graph", headers={"host": "evil.example"})).status_code == 421
        assert (await client.get("/graph")).status_code == 200


async def test_404_and_405_are_json() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.get("/nope")
        assert answer.status_code == 404 and answer.json() == {"error": "Not found: /nope"}
        answer = await client.delete("/graph")
        assert answer.status_code == 405 and answer.json()["error"] == "Method DELETE not allowed on /graph"
        assert "GET" in answer.headers["allow"]


async def test_a_connection_that_never_finishes_its_headers_is_closed() -> None:
    async with running_app(make_settings(header_timeout_seconds=0.5)) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as silent, await anyio.connect_tcp(host, int(port)) as slow:
            await slow.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            with anyio.fail_after(5):
                assert await _read_until_closed(silent) == b""
                assert await _read_until_closed(slow) == b""
        async with httpx.AsyncClient(base_url=base_url) as client:  # a real request is served as before
            assert (await client.get("/health")).status_code == 200


async def _read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    received = b""
    try:
        while True:
            received += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return received


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "1" * 5000, "-1", "1e3"])
async def test_odd_event_ids_are_a_400_not_a_traceback(value: str) -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.get(f"/events/stream?last_event_id={value}")
        assert answer.status_code == 400
        assert answer.json()["parameter"] == "last_event_id"


async def test_a_stored_event_that_no_longer_reads_gives_a_reset_not_a_dead_stream(tmp_path) -> None:
    import sqlite3

    db = tmp_path / "graph.db"
    settings = make_settings(db=str(db), replay_buffer=1)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        await post(client, _json({"tool_ids": ["a", "b", "c"]}))
    with sqlite3.connect(db) as conn:  # what an old bug or a hand edit leaves behind
        conn.execute("UPDATE events SET data = '{\"workflow_id\": null}' WHERE type = 'workflow_executed'")
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream("GET", "/events/stream?last_event_id=0") as stream:
            with anyio.fail_after(10):
                seen = ""
                async for chunk in stream.aiter_text():
                    seen += chunk
                    if "event: reset" in seen and "\n\n" in seen.split("event: reset", 1)[1]:
                        break
        assert '"reason":"unreadable_log"' in seen


async def test_a_retried_execution_is_not_counted_twice(tmp_path) -> None:
    settings = make_settings(db=str(tmp_path / "graph.db"))
    body = _json({"workflow_id": "wf-retry", "tool_ids": ["a", "b"]})
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for _ in range(2):  # the answer to the first was lost: the client posts again
            answer = await post(client, body)
            assert answer.status_code == 202 and answer.json() == {"workflow_ids": ["wf-retry"]}
        (edge,) = (await client.get("/graph")).json()["edges"]
        assert edge["observed_count"] == 1
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        await post(client, body)  # after a restart too
        (edge,) = (await client.get("/graph")).json()["edges"]
        assert edge["observed_count"] == 1


async def test_a_full_disk_is_a_503_naming_the_cause_and_health_recovers_by_itself(tmp_path) -> None:
    settings = make_settings(db=str(tmp_path / "graph.db"))
    async with running_server(settings) as running, httpx.AsyncClient(base_url=running.base_url) as client:
        assert (await post(client, _json({"tool_ids": ["a", "b"]}))).status_code == 202
        assert (await client.get("/health")).json()["status"] == "ok"
        store = running.state.engine.store
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from now on
        big = [{"tool_ids": [f"tool-{i}-{j}" for j in range(50)]} for i in range(40)]
        answer = await post(client, _json(big))
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "database or disk is full" in answer.json()["error"]
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded" and "database or disk is full" in health["store_error"]
        store._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
        assert (await post(client, _json(big))).status_code == 202
        assert (await client.get("/health")).json()["status"] == "ok"
