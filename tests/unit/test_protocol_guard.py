"""The protocol guard in process: strict decoding, error answers, and no futures left behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from lsprotocol import types

from dg_lsp.server.protocol_guard import explain, strict_converter
from dg_lsp.server.server import create_server


class Sink:
    """Collects what the server writes (a real pygls writer: bytes in, frames out)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def messages(self) -> list[dict[str, Any]]:
        out, rest = [], self.data
        while rest:
            header, _, rest = rest.partition(b"\r\n\r\n")
            length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            out.append(json.loads(rest[:length]))
            rest = rest[length:]
        return out


def test_strict_converter_rejects_coercions_and_keeps_enums() -> None:
    converter = strict_converter()
    good = converter.structure({"line": 1, "character": 2}, types.Position)
    assert good == types.Position(line=1, character=2)
    for bad in ({"line": "1", "character": 2}, {"line": 1.0, "character": 2}, {"line": True, "character": 2}):
        with pytest.raises(Exception) as caught:
            converter.structure(bad, types.Position)
        assert "line: expected an integer" in explain(caught.value)
    kind = converter.structure({"triggerKind": 1}, types.InlineCompletionContext)
    assert kind.trigger_kind is types.InlineCompletionTriggerKind.Invoked
    with pytest.raises(Exception) as caught:
        converter.structure({"uri": 5}, types.TextDocumentIdentifier)
    assert explain(caught.value) == "uri: expected a string, got integer 5"


async def test_notifications_leave_no_futures_behind_and_requests_are_answered() -> None:
    server = create_server()
    sink = Sink()
    protocol = server.protocol
    protocol.set_writer(sink)  # type: ignore[arg-type]

    def send(message: dict[str, Any]) -> None:
        protocol.handle_message({"jsonrpc": "2.0", **message})

    send({"id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {}}})
    send({"method": "textDocument/didOpen", "params": {"textDocument": {"uri": "file:///a.py", "languageId": "python", "version": 1, "text": "x = 1\n"}}})
    for version in range(2, 202):
        send({"method": "textDocument/didChange", "params": {
            "textDocument": {"uri": "file:///a.py", "version": version},
            "contentChanges": [{"range": {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 5}}, "text": "0"}]}})
    send({"id": 2, "method": "textDocument/inlineCompletion", "params": {"textDocument": {"uri": "file:///a.py"}, "position": {"line": "0", "character": 0}, "context": {"triggerKind": 1}}})
    send({"id": 3, "method": "$/cancelRequest", "params": {"id": 1}})
    send({"id": 4, "method": "no/such"})
    for _ in range(20):
        await asyncio.sleep(0)
    assert server.documents["file:///a.py"].tree.text == "x = 1" + "0" * 200 + "\n"
    assert protocol._request_futures == {}  # pygls alone keeps one per didChange
    answers = {m["id"]: m for m in sink.messages() if "id" in m}
    assert "result" in answers[1]
    assert answers[2]["error"]["code"] == -32602 and "position.line: expected an integer" in answers[2]["error"]["message"]
    assert answers[3]["error"]["code"] == -32600 and "is a notification" in answers[3]["error"]["message"]
    assert answers[4]["error"]["code"] == -32601
    server.jobs.shutdown()
