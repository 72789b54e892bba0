"""End-to-end: language servers using ``engine: {kind: "remote"}`` against the real engine server.

Several dg-lsp processes share one ``dg-lsp engine-serve`` process (the tiny checkpoint, greedy,
seed 0, so every path must give the same answers as a local engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.e2e.engine_server import RunningServer, start_engine_server
from tests.e2e.lsp_session import STATS_SOURCE, STATS_URI, SERVER, Recorder, attach, change, info, inline, open_document, session_options, start

URI, SOURCE = STATS_URI, STATS_SOURCE
#: Cursor positions compared across engines: ends of lines, mid-line, an empty line.
POSITIONS = [(3, 19), (4, 11), (7, 8), (8, 4), (5, 0)]
CANCELLED = 'dg_engine_requests_total{status="cancelled"}'
OK = 'dg_engine_requests_total{status="ok"}'


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_engine_server(tiny_model_dir, tmp_path_factory.mktemp("remote-engine"), "--max-batch", "8")
    yield server
    server.stop()


def token_file(directory: Path, token: str | None) -> str:
    path = directory / "client-token"
    path.write_text(f"{token}\n", encoding="utf-8")
    return str(path)


def remote_options(url: str, token: str | None, **engine: Any) -> dict[str, Any]:
    """initializationOptions for a remote session (no local model configured at all)."""
    options = session_options()
    del options["model"]
    options["engine"] = {"kind": "remote", "url": url, "tokenFile": token, "retries": 2, **engine}
    return options


@contextlib.asynccontextmanager
async def session(options: dict[str, Any]) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    """A dg-lsp process with its own client, initialised with ``options``."""
    client = await SERVER.start()
    assert isinstance(client, LanguageClient)
    recorder = attach(client)
    try:
        await start(client, options)
        yield client, recorder
    finally:
        await client.shutdown_session()
        await client.stop()


async def answers(client: LanguageClient) -> list[list[str]]:
    """The suggestions at :data:`POSITIONS` of :data:`SOURCE`."""
    results = []
    for line, column in POSITIONS:
        result = await inline(client, URI, line, column)
        assert result is not None
        results.append([str(item.insert_text) for item in result.items])
    return results


async def local_answers() -> list[list[str]]:
    async with session(session_options()) as (client, _):
        open_document(client, URI, SOURCE)
        return await answers(client)


def shown(client: LanguageClient, fragment: str) -> list[str]:
    return [m.message for m in client.messages if fragment in m.message]


async def until(condition: Any, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition()`` (sync) until true; a hang guard, not a performance limit."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_three_sessions_share_one_engine_and_match_a_local_engine(engine: RunningServer, tmp_path: Path) -> None:
    expected = await local_answers()
    assert any(expected), "the tiny model suggested nothing at any position"
    ok_before = engine.metric(OK)
    options = remote_options(engine.url, token_file(tmp_path, engine.token))

    async def remote_session() -> tuple[list[list[str]], Recorder, dict[str, Any]]:
        async with session(options) as (client, recorder):
            state = await info(client)
            open_document(client, URI, SOURCE)
            return await answers(client), recorder, state

    results = await asyncio.gather(*(remote_session() for _ in range(3)))
    for got, recorder, state in results:
        assert got == expected
        assert state["status"] == "ready" and state["error"] is None
        assert state["engine"] == {"kind": "remote", "url": engine.url, "dialect": "dg"}
        assert state["model"] == "tiny" and state["modelPath"] == os.environ["DG_LSP_TEST_MODEL"]
        assert state["device"] == "cpu" and state["canvasLength"] > 0
        # Drafts came through the engine server's stream: several steps per request, the last one final.
        by_request: dict[object, list[dict[str, Any]]] = {}
        for draft in recorder.drafts:
            by_request.setdefault(draft["requestId"], []).append(draft)
        assert len(by_request) == len(POSITIONS)
        for drafts in by_request.values():
            assert [d["final"] for d in drafts] == [False] * (len(drafts) - 1) + [True]
            assert [d["step"] for d in drafts] == sorted(d["step"] for d in drafts)
        assert any(len(drafts) > 1 for drafts in by_request.values()), "no intermediate drafts"
    assert engine.metric(OK) - ok_before == 3 * len(POSITIONS)


async def test_rewrite_selection_remotely(engine: RunningServer, tmp_path: Path) -> None:
    selected = {"start": {"line": 3, "character": 4}, "end": {"line": 4, "character": 26}}
    command = types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected, {"apply": False}])
    async with session(session_options()) as (client, _):
        open_document(client, URI, SOURCE)
        local = await client.workspace_execute_command_async(command)
    async with session(remote_options(engine.url, token_file(tmp_path, engine.token))) as (client, recorder):
        open_document(client, URI, SOURCE)
        remote = await client.workspace_execute_command_async(command)
        applied = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected])
        )
    assert isinstance(local, dict) and isinstance(remote, dict) and isinstance(applied, dict)
    assert "error" not in remote
    assert remote["text"] and remote["text"] == local["text"]
    assert remote["edit"] == local["edit"] and remote["steps"] == local["steps"]
    assert applied["applied"] is True and len(recorder.edits) == 1
    assert len(recorder.drafts) > 2 and recorder.drafts[-1]["final"] is True


async def test_openai_dialect_against_the_engine_server(engine: RunningServer, tmp_path: Path) -> None:
    options = remote_options(engine.url + "/v1", token_file(tmp_path, engine.token), dialect="openai")
    ok_before = engine.metric(OK)
    async with session(options) as (client, recorder):
        state = await info(client)
        assert state["status"] == "ready" and state["engine"]["dialect"] == "openai"
        assert state["model"] == "tiny"
        open_document(client, URI, SOURCE)
        got = await answers(client)
        selected = {"start": {"line": 3, "character": 4}, "end": {"line": 3, "character": 19}}
        rewritten = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected, {"apply": False}])
        )
    assert any(got), "no suggestion through the openai dialect"
    assert engine.metric(OK) - ok_before == len(POSITIONS) + 1
    # No per-step drafts on this path: one final draft per request.
    assert recorder.drafts and all(d["final"] for d in recorder.drafts)
    assert isinstance(rewritten, dict) and "text" in rewritten  # a plain re-infill of the selection


async def test_unreachable_engine_is_reported_and_retried_later(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    options = remote_options(url, token_file(tmp_path, "s3cret-token"), retries=1, connectTimeoutMs=500)
    async with session(options) as (client, _):
        state = await info(client)
        expected = f"cannot reach the engine server at {url}: connection refused (after 2 attempts)"
        assert state["status"] == "unreachable" and state["error"] == expected
        await until(lambda: shown(client, "cannot reach"), "no message shown")
        open_document(client, URI, SOURCE)
        result = await inline(client, URI, 4, 11)
        assert result is not None and not result.items
        await asyncio.sleep(0.2)
        assert shown(client, "cannot reach") == [f"dg-lsp: {expected}"]  # once, not per request
        state = await info(client)
        assert state["status"] == "unreachable" and state["jobs"]["failed"] == 1
        # The engine server comes up on that port: the next request goes through.
        late = start_engine_server(tiny_model_dir, tmp_path / "late", "--port", str(port))
        try:
            assert late.url == url
            change(client, URI, 2, (4, 11), (4, 11), " ")
            result = await inline(client, URI, 4, 12)
            assert result is not None
            state = await info(client)
            assert state["status"] == "ready" and state["error"] is None and state["model"] == "tiny"
            assert late.metric(OK) == 1
        finally:
            late.stop()


async def test_a_wrong_token_is_reported(engine: RunningServer, tmp_path: Path) -> None:
    async with session(remote_options(engine.url, token_file(tmp_path, "not-the-token"))) as (client, _):
        expected = f"dg-lsp: the engine server at {engine.url} refused the token (401): check engine.tokenFile"
        await until(lambda: shown(client, "refused the token"), "no message shown")
        state = await info(client)
        assert state["status"] == "failed" and "refused the token (401)" in state["error"]
        open_document(client, URI, SOURCE)
        result = await inline(client, URI, 4, 11)
        assert result is not None and not result.items
        assert shown(client, "refused the token") == [expected]
        assert (await info(client))["status"] == "failed"


async def test_a_missing_token_file_is_reported(engine: RunningServer, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "token"
    async with session(remote_options(engine.url, str(missing))) as (client, _):
        state = await info(client)
        assert state["status"] == "failed" and state["engine"]["kind"] == "remote"
        assert shown(client, "tokenFile") == [
            f"dg-lsp: cannot read engine.tokenFile {missing}: No such file or directory; completions are off"
        ]
        open_document(client, URI, SOURCE)
        result = await inline(client, URI, 4, 11)
        assert result is not None and not result.items


async def wait_for_draft(recorder: Recorder, request_id: str) -> None:
    await until(lambda: any(d["requestId"] == request_id for d in recorder.drafts), "the request never started")


async def test_cancel_request_cancels_on_the_engine_server(engine: RunningServer, tmp_path: Path) -> None:
    options = remote_options(engine.url, token_file(tmp_path, engine.token))
    options["completion"]["maxSteps"] = 256
    async with session(options) as (client, recorder):
        open_document(client, URI, "def f(xs):\n    \n")
        cancelled = engine.metric(CANCELLED)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI),
            position=types.Position(line=1, character=4),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
        future = asyncio.ensure_future(
            client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="remote-1")
        )
        await wait_for_draft(recorder, "remote-1")
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="remote-1"))
        with pytest.raises(JsonRpcException, match="cancel"):
            await future
        await until(lambda: engine.metric(CANCELLED) == cancelled + 1, "the engine server did not cancel")
        await until(lambda: engine.metric("dg_engine_active_canvases") == 0, "a canvas is still denoising")
        state = await info(client)
        assert state["jobs"]["cancelled"] == 1 and state["jobs"]["completed"] == 0
        assert not [d for d in recorder.drafts if d["requestId"] == "remote-1" and d["final"]]

        # An edit while the remote request runs: an empty answer, and the engine server stops too.
        task = asyncio.ensure_future(
            client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="remote-2")
        )
        await wait_for_draft(recorder, "remote-2")
        change(client, URI, 2, (1, 4), (1, 4), "r")
        result = await task
        assert result is not None and not result.items
        await until(lambda: engine.metric(CANCELLED) == cancelled + 2, "the engine server did not cancel the edit")
        assert (await info(client))["jobs"]["cancelled"] == 2


async def test_switching_between_local_and_remote(engine: RunningServer, tmp_path: Path) -> None:
    token = token_file(tmp_path, engine.token)
    async with session(session_options()) as (client, _):
        open_document(client, URI, SOURCE)
        local = await inline(client, URI, 4, 11)
        assert (await info(client))["engine"] == {"kind": "local"}
        ok_before = engine.metric(OK)

        settings = remote_options(engine.url, token)
        settings["model"] = os.environ["DG_LSP_TEST_MODEL"]
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dgLsp": settings}))
        await until_engine(client, "remote")
        change(client, URI, 2, (0, 0), (0, 0), "")  # a new version: not answered from the cache
        remote = await inline(client, URI, 4, 11)
        assert remote is not None and local is not None
        assert [i.insert_text for i in remote.items] == [i.insert_text for i in local.items]
        assert engine.metric(OK) == ok_before + 1

        settings["engine"] = {"kind": "local"}
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dgLsp": settings}))
        await until_engine(client, "local")
        change(client, URI, 3, (0, 0), (0, 0), "")
        again = await inline(client, URI, 4, 11)
        assert again is not None and [i.insert_text for i in again.items] == [i.insert_text for i in local.items]
        assert engine.metric(OK) == ok_before + 1  # answered locally
        assert client.messages == []


async def until_engine(client: LanguageClient, kind: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        state = await info(client)
        if state["engine"]["kind"] == kind and state["status"] == "ready":
            return
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
