"""The remote backend's wire handling: request bodies, tokens, backoff, errors, answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_lsp.canvas import HoleKind
from dg_lsp.engine.engine import InfillRequest
from dg_lsp.engine.remote_protocol import (
    RemoteEngineError,
    RemoteSettings,
    RetryableError,
    backoff_delays,
    connection_reason,
    estimate_tokens,
    fill_template,
    model_facts,
    read_token,
    request_body,
    result_from_answer,
    retry_after_seconds,
    server_message,
    status_error,
)
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.engine.wire import CompletionRequest

URL = "http://gpu-box:8765"
REQUEST = InfillRequest(
    prefix="def add(a, b):\n    return ",
    suffix="\n\nprint({1: 2})\n",
    language="python",
    kind=HoleKind.REST_OF_LINE,
    settings=SamplerSettings(max_steps=12, entropy_bound=0.2),
    max_canvas=256,
    max_context_tokens=900,
    seed=7,
)
TEMPLATE = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"


def test_dg_body_streams_and_carries_the_whole_request() -> None:
    body = request_body(REQUEST, RemoteSettings(url=URL), "tiny")
    assert body["stream"] is True and body["model"] == "tiny"
    assert (body["prompt"], body["suffix"], body["seed"], body["temperature"]) == (REQUEST.prefix, REQUEST.suffix, 7, 0.0)
    assert body["dg"]["kind"] == "rest_of_line" and body["dg"]["language"] == "python"
    assert body["dg"]["max_context_tokens"] == 900 and body["dg"]["sampler"]["max_steps"] == 12
    # What our engine server parses is exactly the request we started from.
    assert CompletionRequest.model_validate(body).infill_request() == REQUEST


def test_dg_body_seeds_rewrites() -> None:
    rewrite = InfillRequest(prefix="x = ", suffix="\n", language="python", kind=HoleKind.SELECTION,
                            seed_text="compute(1)", seed_noise=0.25)
    body = request_body(rewrite, RemoteSettings(url=URL), None)
    assert "model" not in body
    assert (body["dg"]["seed_text"], body["dg"]["seed_noise"], body["dg"]["kind"]) == ("compute(1)", 0.25, "selection")


def test_openai_body_has_standard_fields_only() -> None:
    body = request_body(REQUEST, RemoteSettings(url=URL, dialect="openai"), "diffusiongemma")
    assert set(body) == {"prompt", "suffix", "max_tokens", "temperature", "seed", "stream", "model"}
    assert body["stream"] is False and body["model"] == "diffusiongemma"
    assert (body["prompt"], body["suffix"]) == (REQUEST.prefix, REQUEST.suffix)
    assert body["max_tokens"] == 32  # the server does not know the hole is one line: ask for a line's worth


@pytest.mark.parametrize(("kind", "tokens"), [(HoleKind.REST_OF_LINE, 32), (HoleKind.LINE, 64), (HoleKind.BLOCK, 256)])
def test_openai_max_tokens_follow_the_hole_kind(kind: HoleKind, tokens: int) -> None:
    request = InfillRequest(prefix="a", suffix="b", language=None, kind=kind, max_canvas=256)
    assert request_body(request, RemoteSettings(url=URL, dialect="openai"), None)["max_tokens"] == tokens
    small = InfillRequest(prefix="a", suffix="b", language=None, kind=kind, max_canvas=16)
    assert request_body(small, RemoteSettings(url=URL, dialect="openai"), None)["max_tokens"] == 16


def test_openai_rewrite_is_a_plain_infill() -> None:
    selection = "value = compute(first, second, third)\n" * 4  # 156 characters, about 52 tokens
    rewrite = InfillRequest(prefix="def f():\n", suffix="\n", language="python", kind=HoleKind.SELECTION,
                            seed_text=selection, max_canvas=256)
    body = request_body(rewrite, RemoteSettings(url=URL, dialect="openai"), None)
    assert "dg" not in body and selection not in json.dumps(body)  # no seeding: the server cannot take it
    assert body["max_tokens"] == 256


def test_fim_template_replaces_suffix() -> None:
    body = request_body(REQUEST, RemoteSettings(url=URL, dialect="openai", fim_template=TEMPLATE), None)
    assert "suffix" not in body
    assert body["prompt"] == f"<|fim_prefix|>{REQUEST.prefix}<|fim_suffix|>{REQUEST.suffix}<|fim_middle|>"


def test_fim_template_is_ignored_by_the_dg_dialect() -> None:
    body = request_body(REQUEST, RemoteSettings(url=URL, dialect="dg", fim_template=TEMPLATE), None)
    assert (body["prompt"], body["suffix"]) == (REQUEST.prefix, REQUEST.suffix)


def test_fill_template_substitutes_once() -> None:
    # Braces in code stay, and a literal "{suffix}" inside the prefix is not substituted again.
    assert fill_template("P{prefix}S{suffix}M", "f'{x}' {suffix}", "{prefix}}") == "Pf'{x}' {suffix}S{prefix}}M"
    assert fill_template("{prefix}", "a", "b") == "a"


def test_read_token_strips_whitespace(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret \n\n", encoding="utf-8")
    assert read_token(str(token)) == "s3cret"
    assert read_token(None) is None


def test_read_token_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RemoteEngineError, match=r"cannot read engine.tokenFile .*missing: No such file"):
        read_token(str(tmp_path / "missing"))
    with pytest.raises(RemoteEngineError, match="cannot read engine.tokenFile"):
        read_token(str(tmp_path))  # a directory
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(RemoteEngineError, match="is empty"):
        read_token(str(empty))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RemoteEngineError, match="not a text file"):
        read_token(str(binary))


def test_backoff_schedule() -> None:
    assert backoff_delays(3) == pytest.approx([0.2, 0.4, 0.8])
    assert backoff_delays(0) == []
    assert backoff_delays(-1) == []
    assert backoff_delays(8) == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])  # capped
    assert backoff_delays(2, base=1.0, cap=1.5) == pytest.approx([1.0, 1.5])


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("1", 1.0), ("0.5", 0.5), (" 2 ", 2.0), ("120", 5.0), ("0", 0.0), (None, None), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-3", None), ("nan", None), ("inf", None)],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_status_errors() -> None:
    refused = status_error(URL, 401, '{"error": {"message": "missing or wrong bearer token"}}', has_token=True)
    assert str(refused) == f"the engine server at {URL} refused the token (401): check engine.tokenFile"
    assert not isinstance(refused, RetryableError) and refused.status == 401
    wants = status_error(URL, 401, "", has_token=False)
    assert str(wants) == f"the engine server at {URL} wants a token (401): set engine.tokenFile"

    busy = status_error(URL, 429, '{"error": {"message": "the engine is busy"}}', True, retry_after="1")
    assert isinstance(busy, RetryableError) and busy.retry_after == 1.0 and busy.status == 429
    assert str(busy) == f"the engine server at {URL} is busy (429)"

    loading = status_error(URL, 503, '{"error": {"message": "the model is loading: try again shortly"}}', True)
    assert isinstance(loading, RetryableError) and loading.retry_after is None
    assert str(loading) == f"the engine server at {URL} is not ready (503): the model is loading: try again shortly"

    invalid = status_error(URL, 400, '{"error": {"message": "the selection is 300 tokens"}}', True)
    assert not isinstance(invalid, RetryableError)
    assert str(invalid) == f"the engine server at {URL} rejected the request (400): the selection is 300 tokens"

    missing = status_error(URL, 404, "Not Found", True)
    assert not isinstance(missing, RetryableError) and "check engine.url" in str(missing)

    crashed = status_error(URL, 500, "<html>Internal   Server\nError</html>", True)
    assert not isinstance(crashed, RetryableError)
    assert str(crashed) == f"the engine server at {URL} failed (500): <html>Internal Server Error</html>"


def test_server_message_shapes() -> None:
    assert server_message('{"error": {"message": "m", "type": "t"}}') == "m"
    assert server_message('{"error": "plain"}') == "plain"
    assert server_message('{"detail": "Not Found"}') == "Not Found"
    assert server_message("x" * 500) == "x" * 200 + "…"


def test_connection_reason() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
        except ConnectionRefusedError as inner:
            raise OSError("All connection attempts failed") from inner
    except OSError as outer:
        assert connection_reason(outer) == "connection refused"
    assert connection_reason(OSError("[Errno -2] Name or service not known")) == "name or service not known"
    assert connection_reason(OSError("")) == "OSError"


def test_estimate_tokens() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abc", "abcd")] == [0, 1, 1, 2]


def test_result_from_a_dg_answer() -> None:
    answer = {
        "choices": [{"index": 0, "text": "a + b", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 41, "completion_tokens": 5, "total_tokens": 46},
        "dg": {"ended": True, "steps": 9, "canvas_length": 32, "middle_tokens": 5, "prompt_tokens": 41,
               "reused_tokens": 30, "encode_ms": 3.0, "denoise_ms": 88.0, "queue_ms": 0.4, "batch_size": 3},
    }
    result = result_from_answer(answer)
    assert (result.text, result.ended, result.steps, result.middle_tokens, result.canvas_length) == ("a + b", True, 9, 5, 32)
    assert (result.encode.prompt_tokens, result.encode.reused_tokens, result.encode.encoded_tokens) == (41, 30, 11)


def test_result_from_a_plain_openai_answer() -> None:
    answer = {"choices": [{"text": "x", "finish_reason": "length"}], "usage": {"prompt_tokens": 10, "completion_tokens": 32}}
    result = result_from_answer(answer)
    assert (result.text, result.ended, result.steps, result.middle_tokens, result.encode.prompt_tokens) == ("x", False, 0, 32, 10)
    bare = result_from_answer({"choices": [{"text": "y"}]})
    assert (bare.text, bare.ended, bare.middle_tokens) == ("y", True, 0)
    with pytest.raises(TypeError):
        result_from_answer({"choices": [{"text": None}]})
    with pytest.raises(IndexError):
        result_from_answer({"choices": []})


def test_model_facts() -> None:
    listing = {"object": "list", "data": [{"id": "tiny", "dg": {"trainedContextTokens": 2048}}, {"id": "other"}]}
    assert model_facts(listing) == ("tiny", {"trainedContextTokens": 2048})
    assert model_facts({"data": [{"id": "diffusiongemma", "max_model_len": 8192}]}) == ("diffusiongemma", {})
    assert model_facts({}) == (None, {})
    assert model_facts({"data": ["x"]}) == (None, {})
