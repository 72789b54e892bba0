"""End-to-end: the real server process over stdio with the tiny random-weight checkpoint."""

from __future__ import annotations

import ast
import asyncio
import os

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.e2e.lsp_session import SERVER, Recorder, attach, change, inline, info, open_document, start, session_options

URI = "file:///work/project/stats.py"
SOURCE = (
    "import math\n"
    "\n"
    "def mean(xs):\n"
    "    total = sum(xs)\n"
    "    return total / len(xs)\n"
    "\n"
    "def spread(xs):\n"
    "    m = mean(xs)\n"
    "    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))\n"
)


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    lsp_client.recorder = attach(lsp_client)  # type: ignore[attr-defined]
    lsp_client.init_result = await start(lsp_client, session_options())  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


def recorder(client: LanguageClient) -> Recorder:
    return client.recorder  # type: ignore[attr-defined,no-any-return]


async def test_capabilities(client: LanguageClient) -> None:
    caps = client.init_result.capabilities  # type: ignore[attr-defined]
    assert caps.inline_completion_provider is not None
    assert caps.execute_command_provider is not None
    assert {"dg.rewriteSelection", "dg.info"} <= set(caps.execute_command_provider.commands)
    assert caps.code_action_provider is not None
    sync = caps.text_document_sync
    assert isinstance(sync, types.TextDocumentSyncOptions) and sync.change == types.TextDocumentSyncKind.Incremental


async def test_model_load_reports_progress(client: LanguageClient) -> None:
    state = await info(client)
    assert state["status"] == "ready"
    assert state["modelPath"] == os.environ["DG_LSP_TEST_MODEL"]
    assert state["device"] == "cpu" and state["dtype"] == "float32"
    reports = [r for values in client.progress_reports.values() for r in values]
    assert any(isinstance(r, types.WorkDoneProgressBegin) for r in reports)
    assert any(isinstance(r, types.WorkDoneProgressEnd) for r in reports)


async def test_inline_completion_streams_drafts(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    result = await inline(client, URI, 4, 11)  # after "    return "
    assert result is not None and len(result.items) == 1
    item = result.items[0]
    assert isinstance(item.insert_text, str) and item.insert_text
    assert item.range == types.Range(start=types.Position(4, 11), end=types.Position(4, 11))
    assert "\n" not in item.insert_text  # rest-of-line hole stops at the end of the line
    await asyncio.sleep(0.2)
    drafts = [d for d in recorder(client).drafts if d["uri"] == URI]
    assert drafts, "no dg/draft notifications"
    assert all(d["version"] == 1 for d in drafts)
    assert [d["step"] for d in drafts] == sorted(d["step"] for d in drafts)
    assert drafts[-1]["final"] is True and drafts[-1]["maxSteps"] >= drafts[-1]["step"]
    assert drafts[-1]["range"] == {"start": {"line": 4, "character": 11}, "end": {"line": 4, "character": 11}}


async def test_same_request_is_deterministic_and_cached(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    first = await inline(client, URI, 7, 8)
    second = await inline(client, URI, 7, 8)
    assert first is not None and second is not None
    assert [i.insert_text for i in first.items] == [i.insert_text for i in second.items]
    state = await info(client)
    assert state["cacheHits"] >= 1
    assert state["jobs"]["completed"] == 1


async def test_typing_through_answers_without_the_model(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    result = await inline(client, URI, 4, 11)
    assert result is not None and result.items
    suggestion = result.items[0].insert_text
    assert isinstance(suggestion, str) and len(suggestion) >= 2
    typed = suggestion[0]
    change(client, URI, 2, (4, 11), (4, 11), typed)
    follow = await inline(client, URI, 4, 12)
    assert follow is not None and follow.items
    assert follow.items[0].insert_text == suggestion[1:]
    state = await info(client)
    assert state["typeThroughHits"] == 1
    assert state["jobs"]["completed"] == 1


async def test_utf16_positions(client: LanguageClient) -> None:
    text = 'label = "😀é"\nname = \n'
    open_document(client, URI, text)
    result = await inline(client, URI, 0, 13)  # after the closing quote: 😀 is two UTF-16 units
    assert result is not None
    for item in result.items:
        assert item.range is not None and item.range.start == types.Position(0, 13)
    result = await inline(client, URI, 1, 7)
    assert result is not None


async def test_code_action_offers_rewrite_on_selection_only(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    doc = types.TextDocumentIdentifier(uri=URI)
    ctx = types.CodeActionContext(diagnostics=[])
    selected = types.Range(start=types.Position(3, 4), end=types.Position(3, 19))
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(text_document=doc, range=selected, context=ctx)
    )
    assert actions and len(actions) == 1
    action = actions[0]
    assert action.title == "Rewrite selection (diffusion)"
    # lsprotocol's client-side hook reads any action that has a "command" key as a bare
    # Command, so the CodeAction's command object arrives here as its repr string.
    command = ast.literal_eval(action.command) if isinstance(action, types.Command) else action.command
    command = command if isinstance(command, dict) else {"command": command.command, "arguments": command.arguments}
    assert command["command"] == "dg.rewriteSelection"
    assert command["arguments"][0] == URI
    assert command["arguments"][1] == {"start": {"line": 3, "character": 4}, "end": {"line": 3, "character": 19}}
    empty = types.Range(start=types.Position(3, 4), end=types.Position(3, 4))
    none = await client.text_document_code_action_async(
        types.CodeActionParams(text_document=doc, range=empty, context=ctx)
    )
    assert not none


async def test_rewrite_selection_applies_a_versioned_edit(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    selected = {"start": {"line": 3, "character": 4}, "end": {"line": 4, "character": 26}}
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected])
    )
    assert isinstance(result, dict)
    assert result["uri"] == URI and result["version"] == 1
    assert isinstance(result["text"], str) and result["text"]
    assert result["applied"] is True
    edits = recorder(client).edits
    assert len(edits) == 1 and edits[0].document_changes
    doc_edit = edits[0].document_changes[0]
    assert isinstance(doc_edit, types.TextDocumentEdit)
    assert doc_edit.text_document.version == 1
    edit = doc_edit.edits[0]
    assert isinstance(edit, types.TextEdit)
    # The edit stays inside the selection and turns the selection into the returned text.
    lines = SOURCE.split("\n")
    start = sum(len(l) + 1 for l in lines[:3]) + 4
    end = sum(len(l) + 1 for l in lines[:4]) + 26
    e_start = sum(len(l) + 1 for l in lines[: edit.range.start.line]) + edit.range.start.character
    e_end = sum(len(l) + 1 for l in lines[: edit.range.end.line]) + edit.range.end.character
    assert start <= e_start <= e_end <= end
    rewritten = SOURCE[start:e_start] + edit.new_text + SOURCE[e_end:end]
    assert rewritten == result["text"]


async def test_rewrite_preview_does_not_apply(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    selected = {"start": {"line": 7, "character": 4}, "end": {"line": 7, "character": 16}}
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected, {"apply": False}])
    )
    assert result["applied"] is False and result["edit"] is not None
    assert recorder(client).edits == []
