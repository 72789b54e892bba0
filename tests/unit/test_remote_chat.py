"""The remote backend's chat dialect: an OpenAI-compatible /v1/chat/completions (vLLM) over a mock transport."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dg_lsp.canvas import HoleKind
from dg_lsp.config import CompletionOptions, EngineOptions, RewriteOptions, ServerOptions, parse_options
from dg_lsp.engine.engine import InfillRequest
from dg_lsp.engine.remote import RemoteBackend, RemoteEngineError, RemoteSettings
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.infill import complete, rewrite
from dg_lsp.prompting.chat import HoleText, instruction
from dg_lsp.syntax import DocumentTree

URL = "http://vllm.test:8000/v1"
PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\nprint(add(1, 2))\n"


def chat_answer(content: str | None, finish: str = "stop") -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127},
    }


class ChatServer:
    """Answers ``/v1/models`` (or 404) and ``/v1/chat/completions`` with the given replies, in order."""

    def __init__(self, *replies: httpx.Response, listing: bool = True) -> None:
        self.replies = list(replies)
        self.listing = listing
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/models":
            if not self.listing:
                return httpx.Response(404, text="Not Found")
            return httpx.Response(200, json={"object": "list", "data": [{"id": "diffusiongemma", "object": "model"}]})
        assert request.url.path == "/v1/chat/completions", request.url.path
        return self.replies.pop(0)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == "/v1/chat/completions"]


@pytest.fixture
def backends() -> Iterator[list[RemoteBackend]]:
    made: list[RemoteBackend] = []
    yield made
    for backend in made:
        backend.close()


def chat_backend(made: list[RemoteBackend], server: ChatServer, **settings: Any) -> RemoteBackend:
    async def no_wait(seconds: float) -> None:
        return None

    backend = RemoteBackend(
        RemoteSettings(url=URL, dialect="chat", **settings), transport=httpx.MockTransport(server), sleep=no_wait
    )
    made.append(backend)
    return backend


def test_the_request_is_one_user_turn_with_the_chat_instruction(backends: list[RemoteBackend]) -> None:
    server = ChatServer(httpx.Response(200, json=chat_answer("a + b")))
    backend = chat_backend(backends, server)
    request = InfillRequest(
        prefix=PREFIX, suffix=SUFFIX, language="python", kind=HoleKind.REST_OF_LINE, file_name="add.py",
        settings=SamplerSettings(max_steps=12),
    )
    result = backend.infill(request)
    assert result.text == "a + b" and result.ended
    assert (result.encode.prompt_tokens, result.middle_tokens) == (120, 7)
    (body,) = server.bodies()
    turn = instruction(HoleText(PREFIX, SUFFIX, "python", HoleKind.REST_OF_LINE, "add.py"))
    assert body["messages"] == [{"role": "user", "content": turn}]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["model"] == "diffusiongemma"  # the listed model, as no name was configured
    assert (body["max_tokens"], body["temperature"], body["stream"]) == (32, 0.0, False)
    assert "prompt" not in body and "suffix" not in body and "dg" not in body
    assert backend.prompt_format == "chat" and backend.sampler_defaults == SamplerSettings()


def test_completion_cleans_the_answer_like_a_local_chat_answer(backends: list[RemoteBackend]) -> None:
    content = "<|channel>thought\nadd them<channel|>```python\n    return a + b\n```"
    server = ChatServer(httpx.Response(200, json=chat_answer(content)), listing=False)
    backend = chat_backend(backends, server, model="diffusiongemma")
    text = PREFIX + SUFFIX
    doc = DocumentTree(text, "python")
    drafts: list[tuple[str, bool]] = []
    result = complete(
        backend, text, doc.tree, "python", len(PREFIX), CompletionOptions(), on_draft=lambda t, s, n, f: drafts.append((t, f)),
        file_name="add.py",
    )
    assert result is not None and result.text == "a + b"
    assert drafts == [("a + b", True)]  # one final draft: this path has no per-step drafts
    assert server.bodies()[0]["model"] == "diffusiongemma"


@pytest.mark.parametrize("parse_check", [True, False])
def test_the_final_draft_is_the_answer(backends: list[RemoteBackend], parse_check: bool) -> None:
    """An answer the parse check rejects is no final draft either: an editor that shows final drafts would show it."""
    server = ChatServer(httpx.Response(200, json=chat_answer("a + (b")))
    backend = chat_backend(backends, server)
    text = PREFIX + SUFFIX
    drafts: list[tuple[str, bool]] = []
    result = complete(
        backend, text, DocumentTree(text, "python").tree, "python", len(PREFIX),
        CompletionOptions(parse_check=parse_check), on_draft=lambda t, s, n, f: drafts.append((t, f)),
    )
    answer = result.text if result is not None else ""
    assert answer == ("" if parse_check else "a + (b")
    assert drafts == [(answer, True)]


def test_a_rewrite_sends_the_selection_in_the_turn(backends: list[RemoteBackend]) -> None:
    server = ChatServer(httpx.Response(200, json=chat_answer("```python\nreturn b + a\n```")))
    backend = chat_backend(backends, server)
    text = "def add(a, b):\n    return a + b\n"
    start = text.index("return")
    edit = rewrite(backend, text, "python", start, len(text) - 1, CompletionOptions(), RewriteOptions())
    assert edit is not None and edit.new_text == "return b + a"
    content = server.bodies()[0]["messages"][0]["content"]
    assert "Rewrite the code in the hole" in content and "```python\nreturn a + b\n```" in content


def test_an_answer_without_content_is_no_completion(backends: list[RemoteBackend]) -> None:
    server = ChatServer(httpx.Response(200, json=chat_answer(None, finish="length")))
    backend = chat_backend(backends, server)
    text = PREFIX + SUFFIX
    assert complete(backend, text, DocumentTree(text, "python").tree, "python", len(PREFIX), CompletionOptions()) is None


def test_server_errors_are_clear(backends: list[RemoteBackend]) -> None:
    server = ChatServer(httpx.Response(400, json={"error": {"message": "model does not support chat"}}))
    backend = chat_backend(backends, server)
    request = InfillRequest(prefix=PREFIX, suffix=SUFFIX, language="python", kind=HoleKind.LINE)
    with pytest.raises(RemoteEngineError, match=r"rejected the request \(400\): model does not support chat"):
        backend.infill(request)


def test_an_answer_that_is_not_a_chat_completion(backends: list[RemoteBackend]) -> None:
    server = ChatServer(httpx.Response(200, json={"choices": [{"message": {"content": 42}}]}))
    backend = chat_backend(backends, server)
    request = InfillRequest(prefix=PREFIX, suffix=SUFFIX, language="python", kind=HoleKind.LINE)
    with pytest.raises(RemoteEngineError, match="cannot read"):
        backend.infill(request)


def test_the_chat_dialect_is_a_setting(tmp_path: Path) -> None:
    options, problems = parse_options(
        ServerOptions, {"engine": {"kind": "remote", "url": URL, "dialect": "chat", "model": "diffusiongemma"}}
    )
    assert problems == [] and options.engine == EngineOptions(kind="remote", url=URL, dialect="chat", model="diffusiongemma")


def test_the_dg_dialect_carries_the_file_name_to_the_engine_server() -> None:
    from dg_lsp.engine.wire import CompletionRequest, completion_body

    request = InfillRequest(prefix=PREFIX, suffix=SUFFIX, language="python", kind=HoleKind.LINE, file_name="add.py")
    body = completion_body(request, "tiny", stream=True, dialect="dg")
    assert body["dg"]["file_name"] == "add.py"
    assert CompletionRequest.model_validate(body).infill_request().file_name == "add.py"
    unnamed = completion_body(InfillRequest(prefix="", suffix="", language=None, kind=HoleKind.LINE), None, stream=False)
    assert "file_name" not in unnamed["dg"]  # older engine servers reject unknown fields


def test_the_engine_server_fills_unset_sampler_fields_with_the_model_defaults() -> None:
    from dg_lsp.engine.wire import CompletionRequest

    model = SamplerSettings(max_steps=48, entropy_bound=0.1, t_min=0.4, t_max=0.8)
    plain = CompletionRequest.model_validate({"prompt": "x = ", "suffix": "\n"}).infill_request(model)
    assert plain.settings == model  # an OpenAI client that sends no dg fields gets the checkpoint's sampler
    some = CompletionRequest.model_validate({"prompt": "x", "dg": {"sampler": {"max_steps": 6}}}).infill_request(model)
    assert (some.settings.max_steps, some.settings.t_min, some.settings.t_max) == (6, 0.4, 0.8)
    warm = CompletionRequest.model_validate({"prompt": "x", "temperature": 1.0}).infill_request(model)
    assert (warm.settings.greedy, warm.settings.t_min, warm.settings.t_max) == (False, 0.5, 1.0)
