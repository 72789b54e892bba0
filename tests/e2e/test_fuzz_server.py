"""A bounded fuzz of the whole language server over stdio (seeded, so every CI run sends the same messages).

Thousands of messages: valid typing (incremental edits with emoji, astral characters and CRLF,
mirrored by the client) interleaved with inline completions, rewrites, cancellations, code
actions, and malformed traffic (random methods, params of random JSON shapes, ids of every JSON
type, bodies that are not JSON). Checked at the end:

- the server is alive and still completes (no crash);
- every request with an id a response can carry got exactly one answer (no hang), and no
  answer is an internal error (-32603);
- no stale result: no non-empty completion and no ``workspace/applyEdit`` for document
  version v arrives after the answer to a request that was sent after the edit to v + 1
  (the server reads in order, so it had already seen that edit).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lsp_session import session_options
from tests.e2e.raw_lsp import RawClient, frame, inline_params

MESSAGES = 3000
SEEDS = [13]
PIECES = ["a", "b", "x", " ", "(", ")", ":", "\n", "\r\n", "é", "中", "😀", "𝔘", "def f():", "    ", "return 1", "\t", "'", '"']
METHODS = [
    "textDocument/inlineCompletion", "textDocument/codeAction", "workspace/executeCommand", "textDocument/didChange",
    "textDocument/didOpen", "textDocument/didClose", "$/cancelRequest", "workspace/didChangeConfiguration",
    "textDocument/hover", "dg/unknown", "", "initialize", "$/setTrace", "textDocument/completion",
]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (objects and arrays nest a few levels)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 7, 2**31, 2**53, -(2**40)])
    if kind == 3:
        return rng.choice([0.5, -3.25, 1e300])
    if kind in (4, 5):
        return rng.choice(["", "x", "file:///fuzz/a.py", "😀", "\u0000", "a" * 200])
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["textDocument", "position", "uri", "line", "character", "range", "start", "end", "id", "command",
            "arguments", "context", "settings", "text", "version", "contentChanges"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def utf16(text: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text)


@dataclass
class Mirror:
    """The client's copy of one document (line list without breaks; CRLF kept inside text)."""

    uri: str
    text: str
    version: int = 1

    def spans(self) -> list[tuple[int, int]]:
        """(start, content end) of each line; breaks are \\n or \\r\\n (the fuzz never leaves a lone \\r)."""
        spans, start = [], 0
        for match in re.finditer(r"\r\n|\n", self.text):
            spans.append((start, match.start()))
            start = match.end()
        return spans + [(start, len(self.text))]

    def random_position(self, rng: random.Random) -> dict[str, int]:
        spans = self.spans()
        line = rng.randrange(len(spans))
        start, end = spans[line]
        return {"line": line, "character": rng.randrange(utf16(self.text[start:end]) + 1)}

    def offset(self, position: dict[str, int]) -> int:
        start, end = self.spans()[position["line"]]
        units, column = 0, start
        while column < end and units + utf16(self.text[column]) <= position["character"]:
            units += utf16(self.text[column])
            column += 1
        return column

    def edit(self, rng: random.Random) -> dict[str, Any]:
        a, b = self.random_position(rng), self.random_position(rng)
        if (a["line"], a["character"]) > (b["line"], b["character"]):
            a, b = b, a
        start, end = self.offset(a), self.offset(b)
        if self.text[start - 1 : start + 1] == "\r\n" or self.text[end - 1 : end + 1] == "\r\n":
            return {}  # never split a CRLF in the mirror (the server would see two breaks)
        new = "".join(rng.choice(PIECES) for _ in range(rng.randrange(4)))
        if (start > 0 and self.text[start - 1] == "\r" and new.startswith("\n")) or (new.endswith("\r") and self.text[end : end + 1] == "\n"):
            return {}
        self.text = self.text[:start] + new + self.text[end:]
        self.version += 1
        return {"range": {"start": a, "end": b}, "text": new}


@dataclass
class Sent:
    """A request the fuzz sent that a response can be matched to."""

    msg_id: Any
    method: str
    uri: str | None
    version: int | None
    order: int


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.timeout(300)
async def test_fuzz_the_server(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    client = await RawClient.start(tmp_path / "server.log")
    await client.initialize(session_options(maxSteps=8))
    docs = [Mirror(f"file:///fuzz/doc{i}.py", "def area(w, h):\r\n    return w * h\n\nprint('😀', area(2, 3))\n") for i in range(3)]
    for doc in docs:
        await client.notify("textDocument/didOpen", {"textDocument": {"uri": doc.uri, "languageId": "python", "version": 1, "text": doc.text}})
    sent: list[Sent] = []
    edit_order: dict[tuple[str, int], int] = {}  # (uri, version) -> order of the edit that made it
    order = 0
    counts: dict[str, int] = {}

    async def request(method: str, params: Any, doc: Mirror | None = None, msg_id: Any = None) -> None:
        nonlocal order
        order += 1
        msg_id = client.next_id() if msg_id is None else msg_id
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None or rng.random() < 0.5:
            message["params"] = params
        await client.send(message)
        sent.append(Sent(msg_id, method, doc.uri if doc else None, doc.version if doc else None, order))

    for _ in range(MESSAGES):
        doc = rng.choice(docs)
        roll = rng.random()
        if roll < 0.35:  # typing
            change = doc.edit(rng)
            if change:
                order += 1
                edit_order[(doc.uri, doc.version)] = order
                await client.notify("textDocument/didChange", {"textDocument": {"uri": doc.uri, "version": doc.version}, "contentChanges": [change]})
                counts["edit"] = counts.get("edit", 0) + 1
        elif roll < 0.55:  # a valid completion request
            position = doc.random_position(rng)
            await request("textDocument/inlineCompletion", inline_params(doc.uri, position["line"], position["character"]), doc)
            counts["inline"] = counts.get("inline", 0) + 1
        elif roll < 0.58:  # a rewrite of a random range, applied
            a, b = doc.random_position(rng), doc.random_position(rng)
            await request("workspace/executeCommand", {"command": "dg.rewriteSelection", "arguments": [doc.uri, {"start": a, "end": b}, {"apply": True}]}, doc)
            counts["rewrite"] = counts.get("rewrite", 0) + 1
        elif roll < 0.63:  # cancel something
            target = rng.choice(sent).msg_id if sent else 1
            await client.notify("$/cancelRequest", {"id": target})
            counts["cancel"] = counts.get("cancel", 0) + 1
        elif roll < 0.66:
            position = doc.random_position(rng)
            await request("textDocument/codeAction", {"textDocument": {"uri": doc.uri}, "range": {"start": position, "end": doc.random_position(rng)}, "context": {"diagnostics": []}}, doc)
        elif roll < 0.85:  # a known or unknown method with params of a random shape
            await request(rng.choice(METHODS), random_json(rng))
            counts["random"] = counts.get("random", 0) + 1
        elif roll < 0.90:  # ids of every JSON type
            msg_id = rng.choice([f"s{order}", order + 10_000_000 + 0.5, None, {"x": 1}, [1], True])
            message = {"jsonrpc": "2.0", "id": msg_id, "method": rng.choice(METHODS), "params": random_json(rng)}
            await client.send(message)
            if isinstance(msg_id, (str, float)) and not isinstance(msg_id, bool):
                order += 1
                sent.append(Sent(msg_id, str(message["method"]), None, None, order))
            counts["odd id"] = counts.get("odd id", 0) + 1
        elif roll < 0.95:  # not JSON-RPC at all
            await client.send_bytes(frame(rng.choice([b"{", b"[]", b"null", b"\xff\xfe", b'{"jsonrpc": "2.0"}', b"42", json.dumps(random_json(rng)).encode()])))
            counts["garbage"] = counts.get("garbage", 0) + 1
        else:  # a notification with random params
            await client.notify(rng.choice(METHODS), random_json(rng))
            counts["notification"] = counts.get("notification", 0) + 1

    answers = await client.wait_for([s.msg_id for s in sent], timeout=180)
    internal = [a for a in answers if "error" in a and a["error"].get("code") == -32603]
    assert not internal, internal[:5]
    assert client.duplicates == []
    assert client.process.returncode is None

    # Staleness: nothing for version v after the answer to a request sent after the edit to v + 1.
    arrival = {id(m): i for i, m in enumerate(client.arrivals)}
    answered_at = {s.msg_id: arrival[id(client.responses[s.msg_id])] for s in sent}
    stale = []
    for s in sent:
        if s.uri is None or s.version is None:
            continue
        newer_edit = edit_order.get((s.uri, s.version + 1))
        if newer_edit is None:
            continue
        first_after = min((answered_at[o.msg_id] for o in sent if o.order > newer_edit), default=None)
        reply = client.responses[s.msg_id]
        result = reply.get("result")
        non_empty = isinstance(result, dict) and (result.get("items") or result.get("applied"))
        if non_empty and first_after is not None and answered_at[s.msg_id] > first_after:
            stale.append(reply)
    for index, message in enumerate(client.arrivals):  # applied edits carry their document version
        if message.get("method") == "workspace/applyEdit":
            for change in message["params"]["edit"].get("documentChanges", []):
                uri, version = change["textDocument"]["uri"], change["textDocument"]["version"]
                newer_edit = edit_order.get((uri, version + 1))
                first_after = min((answered_at[o.msg_id] for o in sent if newer_edit is not None and o.order > newer_edit), default=None)
                if first_after is not None and index > first_after:
                    stale.append(message)
    assert stale == []

    state = await client.info()
    assert state["status"] == "ready"
    last = docs[0]
    good = await client.request("textDocument/inlineCompletion", inline_params(last.uri, 0, 0))
    assert "result" in good
    assert counts["edit"] > 500 and counts["inline"] > 300 and counts["garbage"] > 50
    assert await client.close() == 0
