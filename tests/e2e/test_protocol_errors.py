"""End-to-end: every JSON-RPC request gets an answer, malformed ones the error a client expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lsp_session import session_options
from tests.e2e.raw_lsp import RawClient, frame, inline_params

URI = "file:///work/project/app.py"
SOURCE = "def area(w, h):\n    return w * h\n\nprint(area(2, 3))\n"
INLINE = "textDocument/inlineCompletion"

INVALID_PARAMS = -32602
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601


@pytest.fixture
async def raw(tmp_path: Path):
    client = await RawClient.start(tmp_path / "server.log")
    await client.initialize(session_options())
    await client.notify(
        "textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": SOURCE}}
    )
    yield client
    assert await client.close() == 0


def _error(reply: dict[str, Any]) -> dict[str, Any]:
    assert "error" in reply and "result" not in reply, reply
    return reply["error"]


async def test_the_six_malformed_inline_completions_of_issue_13_are_answered(raw: RawClient) -> None:
    """A string line, negative positions, numbers past 2^31, a non-string URI, {} and null params."""
    cases: list[tuple[Any, str]] = [
        (inline_params(URI, "1", 0), "params.position.line: expected an integer, got string"),
        (inline_params(URI, -1, -5), "Position.line should be in range"),
        (inline_params(URI, 2**31 + 7, 2**40), "should be in range [0:2147483647]"),
        (inline_params(12345, 0, 0), "params.textDocument.uri: expected a string, got integer"),
        ({}, "required field missing"),
        (None, "params"),
    ]
    ids = []
    for params, _ in cases:
        msg_id = raw.next_id()
        ids.append(msg_id)
        await raw.send({"jsonrpc": "2.0", "id": msg_id, "method": INLINE, "params": params})
    replies = await raw.wait_for(ids, timeout=60)
    for reply, msg_id, (_, expected) in zip(replies, ids, cases):
        assert reply["id"] == msg_id
        error = _error(reply)
        assert error["code"] == INVALID_PARAMS, error
        assert error["message"].startswith(f"invalid params for {INLINE}: "), error
        assert expected in error["message"], error
    # The server is alive and still completes.
    good = await raw.request(INLINE, inline_params(URI, 1, 11))
    assert "result" in good and good["result"] is not None
    assert (await raw.info())["status"] == "ready"


async def test_invalid_requests_and_unknown_methods(raw: RawClient) -> None:
    await raw.send({"jsonrpc": "1.0", "id": 101, "method": INLINE, "params": inline_params(URI, 0, 0)})
    await raw.send({"jsonrpc": "2.0", "id": 102, "method": 7})
    await raw.send({"jsonrpc": "2.0", "id": 103})
    await raw.send({"jsonrpc": "2.0", "id": 104, "method": "dg/noSuchMethod", "params": {}})
    await raw.send({"jsonrpc": "2.0", "id": "str-id", "method": "dg/noSuchMethod"})
    await raw.send({"jsonrpc": "2.0", "id": 1.5, "method": INLINE, "params": inline_params(URI, 0, 0)})
    await raw.send({"jsonrpc": "2.0", "id": 105, "method": "$/cancelRequest", "params": {"id": 1}})
    r101, r102, r103, r104, rstr, rfloat, r105 = await raw.wait_for([101, 102, 103, 104, "str-id", 1.5, 105], timeout=60)
    assert _error(r105)["code"] == INVALID_REQUEST and "is a notification" in _error(r105)["message"]
    assert _error(r101)["code"] == INVALID_REQUEST and '"jsonrpc" must be "2.0"' in _error(r101)["message"]
    assert _error(r102)["code"] == INVALID_REQUEST and '"method" must be a string' in _error(r102)["message"]
    assert _error(r103)["code"] == INVALID_REQUEST
    assert _error(r104)["code"] == METHOD_NOT_FOUND and "dg/noSuchMethod" in _error(r104)["message"]
    assert _error(rstr)["code"] == METHOD_NOT_FOUND
    assert _error(rfloat)["code"] == INVALID_REQUEST
    assert (await raw.info())["status"] == "ready"


async def test_malformed_frames_are_skipped(raw: RawClient) -> None:
    """Frames that are not JSON, not objects, or have ids no answer could carry are logged and skipped."""
    await raw.send_bytes(frame(b"{not json"))
    await raw.send_bytes(frame(b"\xff\xfe\x00garbage"))
    await raw.send([1, 2, 3])
    await raw.send("\"just a string\"")
    await raw.send({"jsonrpc": "2.0", "id": {"nested": 1}, "method": INLINE})
    await raw.send({"jsonrpc": "2.0", "id": None, "method": INLINE})
    await raw.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": 3}})
    await raw.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": {"x": []}}})
    await raw.send_bytes(b"Content-Type: nothing\r\n\r\n")  # a header block without Content-Length
    good = await raw.request(INLINE, inline_params(URI, 1, 11))
    assert "result" in good
    assert raw.unmatched == []  # nothing answered with a null id
    assert raw.log is not None and "skipping" in raw.log.read_text(errors="replace")


async def test_requests_after_shutdown_are_refused(tmp_path: Path) -> None:
    client = await RawClient.start(tmp_path / "server.log")
    await client.initialize(session_options())
    assert "result" in await client.request("shutdown")
    reply = await client.request(INLINE, inline_params(URI, 0, 0))
    assert _error(reply)["code"] == INVALID_REQUEST and "shutting down" in _error(reply)["message"]
    await client.notify("exit", None)
    assert await client.process.wait() == 0
