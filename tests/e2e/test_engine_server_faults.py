"""End-to-end: the engine server under faults: oversized bodies, probes, SIGTERM, kill and restart, slow clients."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.engine_server import RunningServer, start_engine_server
from tests.e2e.raw_lsp import RawClient, inline_params
from tests.e2e.lsp_session import STATS_SOURCE, STATS_URI, session_options

LONG = 10_000_000
LIMIT = 4096


def body(i: int, **extra: Any) -> dict[str, Any]:
    """A small completion request."""
    request: dict[str, Any] = {
        "prompt": f"# request {i}\ndef add(a, b):\n    return ",
        "suffix": "\n",
        "max_tokens": 32,
        "dg": {"kind": "rest_of_line", "language": "python", "sampler": {"max_steps": 6}},
    }
    request.update(extra)
    return request


def endless(i: int, stream: bool = False) -> dict[str, Any]:
    """A request that denoises until cancelled (it never settles)."""
    request = body(i, stream=stream)
    request["dg"]["sampler"] = {"max_steps": LONG, "confidence_threshold": 0.0}
    return request


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_engine_server(
        tiny_model_dir, tmp_path_factory.mktemp("faults"), "--device", "cpu", "--max-body-bytes", str(LIMIT),
        "--max-steps", str(LONG),
    )
    yield server
    server.stop()


def post(server: RunningServer, payload: Any, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 120)
    return httpx.post(f"{server.url}/v1/completions", headers=server.headers, **({"json": payload} | kwargs))


def test_bodies_over_the_limit_get_413(engine: RunningServer) -> None:
    before = engine.metric('dg_engine_requests_total{status="too_large"}')
    big = body(0, prompt="x = 1\n" * 2000)
    declared = post(engine, big)
    assert declared.status_code == 413
    error = declared.json()["error"]
    assert error["code"] == "request_too_large" and f"limit of {LIMIT} bytes" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        data = json.dumps(big).encode()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    chunked = httpx.post(f"{engine.url}/v1/completions", content=chunks(), timeout=60,
                         headers={**engine.headers, "Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    assert engine.metric('dg_engine_requests_total{status="too_large"}') - before == 2
    assert post(engine, body(1)).status_code == 200  # the server is fine


def test_health_is_public_and_metrics_need_the_token(engine: RunningServer) -> None:
    health = httpx.get(f"{engine.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(f"{engine.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{engine.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{engine.url}/metrics", headers=engine.headers, timeout=10).status_code == 200


def test_slow_and_disconnecting_clients(engine: RunningServer) -> None:
    """A client that sends its body slowly still gets its answer; clients that vanish leave nothing running."""
    payload = json.dumps(body(2)).encode()

    def trickle() -> Iterator[bytes]:
        for start in range(0, len(payload), 16):
            time.sleep(0.02)
            yield payload[start : start + 16]

    slow = httpx.post(f"{engine.url}/v1/completions", content=trickle(), timeout=120,
                      headers={**engine.headers, "Content-Type": "application/json"})
    assert slow.status_code == 200 and slow.json()["choices"][0]["finish_reason"] in ("stop", "length")

    # Eight clients drop their connection mid-request (half of them mid-stream).
    cancelled = engine.metric('dg_engine_requests_total{status="cancelled"}')

    async def vanish(i: int) -> None:
        async with httpx.AsyncClient(headers=engine.headers, timeout=60) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.post(f"{engine.url}/v1/completions", json=endless(i, stream=i % 2 == 0)), 1.0)

    async def all_vanish() -> None:
        await asyncio.gather(*(vanish(i) for i in range(8)))

    asyncio.run(all_vanish())
    deadline = time.monotonic() + 120
    while engine.metric('dg_engine_requests_total{status="cancelled"}') - cancelled < 8:
        assert time.monotonic() < deadline, "abandoned requests were not cancelled"
        time.sleep(0.1)
    while engine.metric("dg_engine_active_canvases") != 0 or engine.metric("dg_engine_queue_depth") != 0:
        assert time.monotonic() < deadline, "abandoned canvases are still being denoised"
        time.sleep(0.1)
    assert post(engine, body(3)).status_code == 200


def test_public_metrics_flag(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_engine_server(tiny_model_dir, tmp_path, "--device", "cpu", "--public-metrics")
    try:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    finally:
        server.stop()


def test_sigterm_finishes_in_flight_work_then_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_engine_server(tiny_model_dir, tmp_path, "--device", "cpu", "--shutdown-timeout", "15",
                                 "--max-steps", str(LONG), "--log-level", "info")
    results: dict[str, Any] = {}

    def finite() -> None:  # a full 256-token canvas, 100 steps: long enough to be caught in flight
        request = body(4, max_tokens=256)
        request["dg"]["kind"] = "block"
        request["dg"]["sampler"] = {"max_steps": 100, "confidence_threshold": 0.0}
        results["finite"] = post(server, request, timeout=60)

    def forever() -> None:
        try:
            with httpx.stream("POST", f"{server.url}/v1/completions", json=endless(5, stream=True),
                              headers=server.headers, timeout=60) as reply:
                results["forever_events"] = [line for line in reply.iter_lines() if line.startswith("data: ")]
        except httpx.HTTPError as exc:
            results["forever_error"] = exc

    try:
        threads = [threading.Thread(target=forever, daemon=True), threading.Thread(target=finite, daemon=True)]
        threads[0].start()
        deadline = time.monotonic() + 60
        while server.metric("dg_engine_active_canvases") < 1:
            assert time.monotonic() < deadline, "the endless request did not start"
            time.sleep(0.02)
        threads[1].start()
        while server.metric("dg_engine_active_canvases") < 2:
            assert time.monotonic() < deadline, "the requests did not start"
            time.sleep(0.02)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        assert time.monotonic() - stopped < 45
        for thread in threads:
            thread.join(timeout=30)
        assert results["finite"].status_code == 200  # in flight when SIGTERM came (2 active canvases), and finished
        assert results["finite"].json()["dg"]["steps"] >= 8
        # The endless stream was cut at the end of the grace period: no [DONE], and nothing hangs.
        assert "data: [DONE]" not in results.get("forever_events", [])
    finally:
        server.stop()  # a failed check must not leave the endless stream running
    log = server.log.read_text(errors="replace")
    assert "finishing in-flight requests" in log and "engine server stopped" in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_language_server_recovers_when_the_engine_is_killed_and_restarted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """kill -9 under load, restart on the same port: the language server answers throughout and recovers by itself."""
    port = _free_port()
    server = start_engine_server(tiny_model_dir, tmp_path / "first", "--port", str(port))
    token = tmp_path / "client-token"
    token.write_text("s3cret-token\n", encoding="utf-8")
    options = session_options()
    del options["model"]
    options["engine"] = {"kind": "remote", "url": server.url, "tokenFile": str(token), "retries": 1,
                         "connectTimeoutMs": 500, "timeoutMs": 20000}
    client = await RawClient.start(tmp_path / "lsp.log")
    restarted: RunningServer | None = None
    try:
        state = await client.initialize(options)
        assert state["status"] == "ready"
        await client.notify("textDocument/didOpen", {"textDocument": {"uri": STATS_URI, "languageId": "python", "version": 1, "text": STATS_SOURCE}})
        ok = await client.request("textDocument/inlineCompletion", inline_params(STATS_URI, 4, 11))
        assert "result" in ok

        async def load(count: int) -> list[dict[str, Any]]:
            ids = []
            for i in range(count):
                msg_id = client.next_id()
                ids.append(msg_id)
                await client.send({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion",
                                   "params": inline_params(STATS_URI, 3 + i % 5, 4)})
                await asyncio.sleep(0.05)
            return await client.wait_for(ids, timeout=120)

        under_load = asyncio.ensure_future(load(20))
        await asyncio.sleep(0.3)
        server.process.kill()  # SIGKILL: no goodbye
        server.process.wait()
        replies = await under_load
        assert all("result" in r or r["error"]["code"] != -32603 for r in replies), replies  # answered, no crash
        await client.notify("textDocument/didChange", {"textDocument": {"uri": STATS_URI, "version": 2}, "contentChanges": [
            {"range": {"start": {"line": 4, "character": 11}, "end": {"line": 4, "character": 11}}, "text": " "}]})
        during = await client.request("textDocument/inlineCompletion", inline_params(STATS_URI, 4, 12))
        assert "result" in during and not during["result"]["items"]  # empty while the engine is away
        assert any("engine server" in m for m in client.messages_shown())
        state = await client.info()
        assert state["status"] in ("unreachable", "ready") and state["error"] and "engine server" in state["error"]

        restarted = start_engine_server(tiny_model_dir, tmp_path / "second", "--port", str(port))
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # every request tries again: completions come back without restarting the editor
            reply = await client.request("textDocument/inlineCompletion", inline_params(STATS_URI, 4, 12))
            assert "result" in reply
            state = await client.info()
            if state["status"] == "ready" and state["error"] is None:
                break
            assert asyncio.get_running_loop().time() < deadline, state
            await asyncio.sleep(0.5)
        assert restarted.metric('dg_engine_requests_total{status="ok"}') >= 1
    finally:
        assert await client.close() == 0
        server.stop()
        if restarted is not None:
            restarted.stop()
