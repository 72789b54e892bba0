"""RemoteBackend over an in-process fake server (httpx.MockTransport): streams, retries, errors, cancellation."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.engine.engine import InfillRequest
from dg_lsp.engine.remote import RemoteBackend, RemoteEngineError, RemoteSettings
from dg_lsp.engine.sampler import SamplerSettings

URL = "http://engine.test:8765"
REQUEST = InfillRequest(
    prefix="def add(a, b):\n    return ", suffix="\n", language="python", kind=HoleKind.REST_OF_LINE,
    settings=SamplerSettings(max_steps=12),
)
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def tokenizer_json() -> str:
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "c": 3}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    return tokenizer.to_str()


def models(dg: dict[str, Any] | None = None) -> httpx.Response:
    entry: dict[str, Any] = {"id": "tiny", "object": "model"}
    if dg is not None:
        entry["dg"] = dg
    return httpx.Response(200, json={"object": "list", "data": [entry]})


def answer(text: str, steps: int = 5) -> dict[str, Any]:
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "dg": {"ended": True, "steps": steps, "canvas_length": 32, "middle_tokens": 3, "prompt_tokens": 9,
               "reused_tokens": 0, "encode_ms": 1.0, "denoise_ms": 2.0, "queue_ms": 0.0, "batch_size": 1},
    }


def draft(text: str, step: int, max_steps: int = 12) -> dict[str, Any]:
    return {"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": None}],
            "dg": {"draft": text, "step": step, "max_steps": max_steps}}


def sse(*events: object) -> httpx.Response:
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


class FakeServer:
    """Answers ``/v1/models`` and the tokenizer; ``/v1/completions`` from a script of handlers."""

    def __init__(self, *completions: Handler, facts: dict[str, Any] | None = None, listing: bool = True) -> None:
        self.completions = list(completions)
        self.facts = facts if facts is not None else {"trainedContextTokens": 512, "device": "cuda:0", "canvasLength": 256}
        self.listing = listing
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/models":
            return models(self.facts) if self.listing else httpx.Response(404, text="Not Found")
        if request.url.path == "/v1/dg/tokenizer.json":
            return httpx.Response(200, text=tokenizer_json())
        assert request.url.path == "/v1/completions", request.url.path
        return await self.completions.pop(0)(request)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == "/v1/completions"]


def reply(response: httpx.Response) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return response

    return handler


def refuse(request: httpx.Request) -> Awaitable[httpx.Response]:
    raise httpx.ConnectError("All connection attempts failed", request=request)


class Backends:
    """Creates backends on a fake server and closes them after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[RemoteBackend] = []
        self.waits: list[float] = []

    async def _sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def __call__(self, server: FakeServer, **settings: Any) -> RemoteBackend:
        token = self.tmp_path / "token"
        token.write_text("s3cret\n", encoding="utf-8")
        settings.setdefault("token_file", str(token))
        backend = RemoteBackend(
            RemoteSettings(url=URL, **settings), transport=httpx.MockTransport(server), sleep=self._sleep
        )
        self.made.append(backend)
        return backend


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Backends]:
    backends = Backends(tmp_path)
    yield backends
    for backend in backends.made:
        backend.close()


def test_connect_dg_fetches_facts_and_the_tokenizer(make: Backends) -> None:
    server = FakeServer()
    backend = make(server)
    assert backend.count_tokens("a b c a b c") == 4  # estimate before connecting: 11 characters / 3
    assert backend.context_tokens is None
    facts = backend.connect()
    assert [r.url.path for r in server.requests] == ["/v1/models", "/v1/dg/tokenizer.json"]
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in server.requests)
    assert backend.count_tokens("a b c a b c") == 6  # exact, with the server's tokenizer
    assert backend.context_tokens == 512
    assert facts["model"] == "tiny" and facts["device"] == "cuda:0" and facts["canvasLength"] == 256
    assert facts["parameters"] is None


def test_connect_openai_skips_the_tokenizer(make: Backends) -> None:
    server = FakeServer(reply(httpx.Response(200, json=answer("x"))), facts={})
    backend = make(server, dialect="openai", token_file=None)
    backend.connect()
    assert [r.url.path for r in server.requests] == ["/v1/models"]
    assert "authorization" not in server.requests[0].headers
    assert backend.count_tokens("a b c a b c") == 4 and backend.context_tokens is None
    backend.infill(REQUEST)
    assert server.bodies()[0]["model"] == "tiny"  # the listed model, as no name was configured


def test_openai_server_without_a_model_list(make: Backends) -> None:
    server = FakeServer(reply(httpx.Response(200, json={"choices": [{"text": "a + b"}]})), listing=False)
    backend = make(server, dialect="openai", model="diffusiongemma")
    assert backend.connect()["model"] is None
    assert backend.infill(REQUEST).text == "a + b"
    assert server.bodies()[0]["model"] == "diffusiongemma"


def test_infill_connects_first_when_needed(make: Backends) -> None:
    server = FakeServer(reply(sse(answer("a + b"), "[DONE]")))
    backend = make(server)
    assert backend.infill(REQUEST).text == "a + b"
    assert [r.url.path for r in server.requests] == ["/v1/models", "/v1/dg/tokenizer.json", "/v1/completions"]
    assert backend.connected


def test_dg_stream_delivers_drafts_then_the_final_text(make: Backends) -> None:
    server = FakeServer(reply(sse(draft("a", 1), draft("a +", 2), draft("a + b", 3), answer("a + b", steps=4), "[DONE]")))
    backend = make(server)
    backend.connect()
    seen: list[tuple[str, int, int, bool]] = []
    result = backend.infill(REQUEST, on_draft=lambda *d: seen.append(d))
    assert seen == [("a", 1, 12, False), ("a +", 2, 12, False), ("a + b", 3, 12, False), ("a + b", 4, 12, True)]
    assert (result.text, result.steps, result.canvas_length, result.encode.prompt_tokens) == ("a + b", 4, 32, 9)
    body = server.bodies()[0]
    assert body["stream"] is True and body["dg"]["drafts"] is True and body["dg"]["kind"] == "rest_of_line"


def test_no_drafts_requested_without_a_draft_callback(make: Backends) -> None:
    server = FakeServer(reply(sse(answer("a"), "[DONE]")))
    make(server).infill(REQUEST)
    assert server.bodies()[0]["dg"]["drafts"] is False


def test_openai_dialect_with_a_fim_template(make: Backends) -> None:
    server = FakeServer(reply(httpx.Response(200, json={"choices": [{"text": "a + b", "finish_reason": "stop"}]})))
    backend = make(server, dialect="openai", fim_template="<PRE>{prefix}<SUF>{suffix}<MID>")
    seen: list[tuple[str, int, int, bool]] = []
    result = backend.infill(REQUEST, on_draft=lambda *d: seen.append(d))
    assert result.text == "a + b" and result.ended
    assert seen == [("a + b", 0, 12, True)]  # no drafts on this path, only the final one
    body = server.bodies()[0]
    assert body["prompt"] == f"<PRE>{REQUEST.prefix}<SUF>{REQUEST.suffix}<MID>" and "suffix" not in body
    assert body["stream"] is False and "dg" not in body


def test_503_is_retried_with_backoff(make: Backends) -> None:
    loading = httpx.Response(503, json={"error": {"message": "the model is loading"}})
    server = FakeServer(reply(loading), reply(loading), reply(sse(answer("ok"), "[DONE]")))
    backend = make(server)
    backend.connect()
    assert backend.infill(REQUEST).text == "ok"
    assert len(server.bodies()) == 3 and make.waits == pytest.approx([0.2, 0.4])


def test_429_honours_retry_after_capped(make: Backends) -> None:
    server = FakeServer(
        reply(httpx.Response(429, headers={"retry-after": "1"}, json={"error": {"message": "busy"}})),
        reply(httpx.Response(429, headers={"retry-after": "3600"}, json={"error": {"message": "busy"}})),
        reply(sse(answer("ok"), "[DONE]")),
    )
    backend = make(server)
    backend.connect()
    assert backend.infill(REQUEST).text == "ok"
    assert make.waits == pytest.approx([1.0, 5.0])


def test_busy_after_every_attempt(make: Backends) -> None:
    busy = httpx.Response(429, json={"error": {"message": "busy"}})
    server = FakeServer(reply(busy), reply(busy))
    backend = make(server, retries=1)
    backend.connect()
    with pytest.raises(RemoteEngineError) as caught:
        backend.infill(REQUEST)
    assert str(caught.value) == f"the engine server at {URL} is busy (429) (after 2 attempts)"
    assert caught.value.status == 429 and not caught.value.unreachable


def test_connection_refused_is_retried_then_reported(make: Backends) -> None:
    server = FakeServer(refuse, refuse, refuse)
    backend = make(server)
    backend.connect()
    with pytest.raises(RemoteEngineError) as caught:
        backend.infill(REQUEST)
    assert str(caught.value) == f"cannot reach the engine server at {URL}: all connection attempts failed (after 3 attempts)"
    assert caught.value.unreachable
    assert make.waits == pytest.approx([0.2, 0.4])


def test_no_retries_when_configured_off(make: Backends) -> None:
    server = FakeServer(refuse)
    backend = make(server, retries=0)
    backend.connect()
    with pytest.raises(RemoteEngineError, match=r"\(after 1 attempt\)$"):
        backend.infill(REQUEST)
    assert make.waits == []


@pytest.mark.parametrize(
    ("status", "message"),
    [(401, "refused the token (401): check engine.tokenFile"),
     (400, "rejected the request (400): select less text")],
)
def test_client_errors_are_not_retried(make: Backends, status: int, message: str) -> None:
    server = FakeServer(reply(httpx.Response(status, json={"error": {"message": "select less text"}})))
    backend = make(server)
    backend.connect()
    with pytest.raises(RemoteEngineError) as caught:
        backend.infill(REQUEST)
    assert str(caught.value) == f"the engine server at {URL} {message}"
    assert len(server.bodies()) == 1 and make.waits == []


def test_a_refused_token_at_connect(make: Backends) -> None:
    async def unauthorized(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "missing or wrong bearer token"}})

    backend = RemoteBackend(RemoteSettings(url=URL), transport=httpx.MockTransport(unauthorized))
    make.made.append(backend)
    with pytest.raises(RemoteEngineError, match="wants a token \\(401\\): set engine.tokenFile"):
        backend.connect()
    assert not backend.connected


def test_never_retry_once_a_draft_went_out(make: Backends) -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        async def events() -> AsyncIterator[bytes]:
            yield f"data: {json.dumps(draft('a', 1))}\n\n".encode()
            raise httpx.ReadError("connection reset by peer")

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    server = FakeServer(broken, reply(sse(answer("never"), "[DONE]")))
    backend = make(server)
    backend.connect()
    seen: list[tuple[str, int, int, bool]] = []
    with pytest.raises(RemoteEngineError) as caught:
        backend.infill(REQUEST, on_draft=lambda *d: seen.append(d))
    assert str(caught.value) == f"lost the connection to the engine server at {URL}: connection reset by peer (after 1 attempt)"
    assert seen == [("a", 1, 12, False)] and len(server.bodies()) == 1


def test_a_broken_stream_before_any_draft_is_retried(make: Backends) -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        async def events() -> AsyncIterator[bytes]:
            raise httpx.RemoteProtocolError("peer closed connection")
            yield b""  # pragma: no cover - makes this an async generator

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    server = FakeServer(broken, reply(sse(answer("second"), "[DONE]")))
    backend = make(server)
    backend.connect()
    assert backend.infill(REQUEST, on_draft=lambda *d: None).text == "second"


def test_an_error_event_is_reported(make: Backends) -> None:
    error = {"error": {"message": "the engine failed: RuntimeError: CUDA out of memory", "type": "server_error"}}
    server = FakeServer(reply(sse(draft("a", 1), error, "[DONE]")))
    backend = make(server)
    backend.connect()
    with pytest.raises(RemoteEngineError) as caught:
        backend.infill(REQUEST, on_draft=lambda *d: None)
    assert str(caught.value) == f"the engine server at {URL} failed: the engine failed: RuntimeError: CUDA out of memory"


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (sse(draft("a", 1), "[DONE]"), "ended the stream without an answer"),
        (sse("{not json", "[DONE]"), "cannot read"),
        (httpx.Response(200, text="<html>hello</html>"), "cannot read"),
        (httpx.Response(200, json={"choices": []}), "cannot read"),
    ],
)
def test_answers_that_make_no_sense(make: Backends, response: httpx.Response, match: str) -> None:
    backend = make(FakeServer(reply(response)))
    backend.connect()
    with pytest.raises(RemoteEngineError, match=match):
        backend.infill(REQUEST, on_draft=lambda *d: None)


def test_a_plain_json_answer_to_a_stream_request_is_read(make: Backends) -> None:
    """A server (or proxy) that ignores ``stream`` still gets its answer read."""
    backend = make(FakeServer(reply(httpx.Response(200, json=answer("a + b", steps=6)))))
    backend.connect()
    seen: list[tuple[str, int, int, bool]] = []
    result = backend.infill(REQUEST, on_draft=lambda *d: seen.append(d))
    assert (result.text, result.steps) == ("a + b", 6) and seen == [("a + b", 6, 12, True)]


def test_the_overall_timeout(make: Backends) -> None:
    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    backend = make(FakeServer(silent), timeout_s=0.1)
    backend.connect()
    with pytest.raises(RemoteEngineError, match=r"did not answer within 0\.1 s"):
        backend.infill(REQUEST)


@pytest.mark.parametrize("stream", [True, False])
def test_cancel_closes_the_request(make: Backends, stream: bool) -> None:
    arrived, closed = threading.Event(), threading.Event()

    async def endless(request: httpx.Request) -> httpx.Response:
        arrived.set()
        if not stream:
            try:
                await asyncio.Event().wait()
            finally:
                closed.set()

        async def events() -> AsyncIterator[bytes]:
            try:
                step = 0
                while True:
                    step += 1
                    yield f"data: {json.dumps(draft('x' * step, step))}\n\n".encode()
                    await asyncio.sleep(0.01)
            finally:
                closed.set()

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    backend = make(FakeServer(endless), dialect="dg" if stream else "openai")
    backend.connect()
    seen: list[tuple[str, int, int, bool]] = []
    with pytest.raises(Cancelled):
        backend.infill(REQUEST, on_draft=lambda *d: seen.append(d), cancelled=lambda: arrived.is_set() and len(seen) >= 2 * stream)
    assert closed.wait(10), "the request was not closed"
    assert all(not final for *_, final in seen)


def test_token_file_problems_are_raised_at_construction(tmp_path: Path) -> None:
    with pytest.raises(RemoteEngineError, match="cannot read engine.tokenFile"):
        RemoteBackend(RemoteSettings(url=URL, token_file=str(tmp_path / "nope")))


def test_close_stops_the_backend(make: Backends) -> None:
    backend = make(FakeServer())
    backend.connect()
    backend.close()
    backend.close()  # twice is fine
    with pytest.raises(RemoteEngineError, match="closed"):
        backend.infill(REQUEST)


def test_an_engine_server_backend_does_not_prefetch(make: Backends) -> None:
    server = FakeServer()
    backend = make(server)
    assert backend.prefetches is False
    assert backend.prefetch(REQUEST) is False
    assert server.requests == []  # nothing was sent: the engine server encodes each request itself
