"""The real engine server over HTTP: batching, streaming, cancellation, auth, back-pressure."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.engine_server import RunningServer, start_engine_server

#: Steps of a request that runs until it is cancelled (it never settles: confidence threshold 0).
LONG = 10_000_000

HOLES = [
    ("def add(a, b):\n    return ", "\n", "rest_of_line", "python"),
    ("class Stack:\n    def push(self, item):\n        ", "\n", "line", "python"),
    ("function greet(name) {\n  ", "\n}\n", "block", "javascript"),
    ("fn main() { let v = ", "; }\n", "rest_of_line", "rust"),
    ("int main(void) {\n", "  return 0;\n}\n", "line", "c"),
    ("local function f(t)\n  ", "\nend\n", "line", "lua"),
]


def body(i: int, **extra: Any) -> dict[str, Any]:
    """The i-th distinct completion request (different prompts, canvases, seeds, samplers)."""
    prefix, suffix, kind, language = HOLES[i % len(HOLES)]
    request: dict[str, Any] = {
        "prompt": f"# request {i}\n" + prefix,
        "suffix": suffix,
        "max_tokens": 64,
        "seed": i,
        "temperature": 0.0 if i % 4 else 0.7,
        "dg": {"kind": kind, "language": language, "sampler": {"max_steps": 6 + i % 5}},
    }
    request.update(extra)
    return request


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_engine_server(tiny_model_dir, tmp_path_factory.mktemp("engine"), "--device", "cpu", "--max-batch", "8", "--max-queue", "64", "--max-steps", str(LONG))
    yield server
    server.stop()


def post(server: RunningServer, payload: dict[str, Any], **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 120)
    return httpx.post(f"{server.url}/v1/completions", json=payload, headers=server.headers, **kwargs)


def test_health_models_and_tokenizer(engine: RunningServer) -> None:
    health = httpx.get(f"{engine.url}/health", headers=engine.headers, timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = httpx.get(f"{engine.url}/v1/models", headers=engine.headers, timeout=10).json()
    facts = models["data"][0]["dg"]
    assert models["data"][0]["id"] == "tiny" and facts["maxBatch"] == 8 and facts["canvasLength"] > 0
    tokenizer = httpx.get(f"{engine.url}{facts['tokenizer']}", headers=engine.headers, timeout=10)
    assert "<fim_middle>" in json.dumps(tokenizer.json())


def test_openai_shaped_answer(engine: RunningServer) -> None:
    answer = post(engine, body(1)).json()
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-")
    choice = answer["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    assert answer["dg"]["steps"] >= 1 and answer["dg"]["canvas_length"] == 64


def test_stop_strings_cut_the_answer(engine: RunningServer) -> None:
    full = post(engine, body(2)).json()["choices"][0]["text"]
    assert len(full) > 2
    cut = post(engine, body(2, stop=[full[1:3]])).json()["choices"][0]
    assert cut["text"] == full[: full.find(full[1:3])] and cut["finish_reason"] == "stop"


async def test_32_concurrent_requests_match_single_requests(engine: RunningServer) -> None:
    singles = [post(engine, body(i)).json() for i in range(32)]
    async with httpx.AsyncClient(headers=engine.headers, timeout=300) as client:
        replies = await asyncio.gather(*(client.post(f"{engine.url}/v1/completions", json=body(i)) for i in range(32)))
    assert [r.status_code for r in replies] == [200] * 32
    together = [r.json() for r in replies]
    assert [t["choices"][0]["text"] for t in together] == [s["choices"][0]["text"] for s in singles]
    assert [t["dg"]["steps"] for t in together] == [s["dg"]["steps"] for s in singles]
    assert max(t["dg"]["batch_size"] for t in together) > 1  # they really shared denoising steps
    assert all(s["dg"]["batch_size"] == 1 for s in singles)


def _events(response: httpx.Response) -> Iterator[Any]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


def test_stream_sends_drafts_then_the_answer(engine: RunningServer) -> None:
    single = post(engine, body(3)).json()
    with httpx.stream("POST", f"{engine.url}/v1/completions", json=body(3, stream=True), headers=engine.headers, timeout=60) as response:
        events = list(_events(response))
    assert events[-1] == "[DONE]"
    drafts, final = events[:-2], events[-2]
    steps = [d["dg"]["step"] for d in drafts]
    assert drafts and steps == sorted(set(steps))  # a slow reader may skip drafts, never reorder them
    assert all(d["dg"]["max_steps"] == drafts[0]["dg"]["max_steps"] >= final["dg"]["steps"] for d in drafts)
    assert all(d["choices"][0]["text"] == "" for d in drafts)  # OpenAI delta clients see only the answer
    assert final["choices"][0]["text"] == single["choices"][0]["text"]
    assert steps[-1] < final["dg"]["steps"]  # the last step's draft is the answer itself


def test_disconnect_cancels_the_request(engine: RunningServer) -> None:
    cancelled = engine.metric('dg_engine_requests_total{status="cancelled"}')
    endless = body(4, stream=True)
    endless["dg"]["sampler"] = {"max_steps": LONG, "confidence_threshold": 0.0}
    started = time.monotonic()
    with httpx.stream("POST", f"{engine.url}/v1/completions", json=endless, headers=engine.headers, timeout=60) as response:
        for event in _events(response):
            if isinstance(event, dict) and event["dg"].get("step", 0) >= 3:
                break  # leave: closing the stream disconnects
    while engine.metric('dg_engine_requests_total{status="cancelled"}') == cancelled:
        assert time.monotonic() - started < 120, "the request was not cancelled"
        time.sleep(0.05)
    assert engine.metric("dg_engine_active_canvases") == 0


def test_disconnect_cancels_a_plain_request(engine: RunningServer) -> None:
    cancelled = engine.metric('dg_engine_requests_total{status="cancelled"}')
    endless = body(5)
    endless["dg"]["sampler"] = {"max_steps": LONG, "confidence_threshold": 0.0}
    with pytest.raises(httpx.ReadTimeout):
        post(engine, endless, timeout=httpx.Timeout(60, read=1.0))
    deadline = time.monotonic() + 120
    while engine.metric('dg_engine_requests_total{status="cancelled"}') == cancelled:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.05)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/models", "/metrics", "/v1/dg/tokenizer.json"])  # /health is public
def test_a_wrong_or_missing_token_is_refused(engine: RunningServer, headers: dict[str, str], path: str) -> None:
    method = "POST" if path == "/v1/completions" else "GET"
    reply = httpx.request(method, f"{engine.url}{path}", json=body(0) if method == "POST" else None, headers=headers, timeout=10)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"]["type"] == "authentication_error"


def test_invalid_requests_get_a_clear_400(engine: RunningServer) -> None:
    missing = post(engine, {"suffix": "x"})
    assert missing.status_code == 400 and "prompt" in missing.json()["error"]["message"]
    bad_kind = post(engine, body(0, dg={"kind": "paragraph"}))
    assert bad_kind.status_code == 400 and "kind" in bad_kind.json()["error"]["message"]
    too_long = post(engine, body(0, dg={"kind": "selection", "seed_text": "x = 1\n" * 500}))
    assert too_long.status_code == 400 and "select less text" in too_long.json()["error"]["message"]
    two = post(engine, body(0, n=2))
    assert two.status_code == 400
    greedy = post(engine, body(0, dg={"sampler": {"max_steps": LONG + 1}}))
    assert greedy.status_code == 400 and "exceeds this server's limit" in greedy.json()["error"]["message"]


def test_a_full_queue_answers_429(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_engine_server(tiny_model_dir, tmp_path, "--device", "cpu", "--max-batch", "1", "--max-queue", "1", "--max-steps", str(LONG), token=None)
    endless = body(0, stream=True)
    endless["dg"]["sampler"] = {"max_steps": LONG, "confidence_threshold": 0.0}
    try:
        with httpx.Client(timeout=60) as client, client.stream("POST", f"{server.url}/v1/completions", json=endless) as first:
            events = _events(first)  # kept referenced: dropping it would close the stream
            next(events)  # running: the one batch slot is taken
            with client.stream("POST", f"{server.url}/v1/completions", json=endless) as second:
                deadline = time.monotonic() + 60
                while server.metric("dg_engine_queue_depth") < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                third = httpx.post(f"{server.url}/v1/completions", json=body(1), timeout=60)
                assert third.status_code == 429
                assert third.headers["retry-after"] == "1"
                assert third.json()["error"]["code"] == "queue_full"
                assert second.status_code == 200
        assert server.metric('dg_engine_requests_total{status="rejected"}') == 1
    finally:
        server.stop()


def test_metrics_count_steps_and_batches(engine: RunningServer) -> None:
    forwards = engine.metric("dg_engine_forwards_total")
    steps = engine.metric("dg_engine_canvas_steps_total")
    answer = post(engine, body(7)).json()
    assert engine.metric("dg_engine_forwards_total") - forwards == answer["dg"]["steps"]
    assert engine.metric("dg_engine_canvas_steps_total") - steps == answer["dg"]["steps"]
    assert engine.metric("dg_engine_request_seconds_count") >= 1


def test_a_public_address_without_a_token_is_refused(tiny_model_dir: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dg_lsp", "engine-serve", "--host", "0.0.0.0", "--port", "0", "--model", str(tiny_model_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0 and "refusing to serve on 0.0.0.0 without a token" in run.stderr


def test_an_unusable_model_is_reported_not_fatal(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RuntimeError, match="not valid JSON"):
        start_engine_server(broken, tmp_path / "work", token=None)


def test_a_huge_prompt_is_answered_from_the_text_near_the_hole(engine: RunningServer) -> None:
    line = "value = compute(items[index]) + offset\n"
    answer = post(engine, body(0, prompt=line * 50_000, suffix=line * 50_000))  # ~2 MB each side
    assert answer.status_code == 200
    assert answer.json()["usage"]["prompt_tokens"] <= 2048 + 8  # the default context budget plus markers
