"""End-to-end: the real server process over stdio with the tiny random-weight checkpoint."""

from __future__ import annotations

import ast
import asyncio
import os

from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.e2e.lsp_session import STATS_SOURCE, STATS_URI, SERVER, Recorder, attach, change, inline, info, open_document, start, session_options

URI, SOURCE = STATS_URI, STATS_SOURCE


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
    # The status turns "ready" in the load thread just before the event loop sends the progress end.
    for _ in range(200):
        reports = [r for values in client.progress_reports.values() for r in values]
        if any(isinstance(r, types.WorkDoneProgressEnd) for r in reports):
            break
        await asyncio.sleep(0.05)
    assert any(isinstance(r, types.WorkDoneProgressBegin) for r in reports)
    assert any(isinstance(r, types.WorkDoneProgressEnd) for r in reports)


def candidate_positions(text: str) -> list[tuple[int, int]]:
    """Cursor positions to try: the tiny random model answers nothing printable at some of them."""
    positions = []
    for line, content in enumerate(text.split("\n")):
        stripped = len(content) - len(content.lstrip())
        for column in sorted({len(content), (stripped + len(content)) // 2, stripped}):
            positions.append((line, column))
    return positions


async def first_suggestion(
    client: LanguageClient, text: str, min_length: int = 1
) -> tuple[tuple[int, int], types.InlineCompletionItem]:
    """The first candidate position whose one-line suggestion has at least ``min_length`` characters."""
    for line, column in candidate_positions(text):
        result = await inline(client, URI, line, column)
        assert result is not None
        suggestion = str(result.items[0].insert_text) if result.items else ""
        if len(suggestion) >= min_length and not suggestion.startswith("\n"):
            return (line, column), result.items[0]
    raise AssertionError("no position gave a suggestion")


async def test_inline_completion_streams_drafts(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    (line, column), item = await first_suggestion(client, SOURCE)
    assert isinstance(item.insert_text, str) and item.insert_text
    assert item.range == types.Range(start=types.Position(line, column), end=types.Position(line, column))
    await asyncio.sleep(0.2)
    drafts = [d for d in recorder(client).drafts if d["uri"] == URI]
    assert drafts, "no dg/draft notifications"
    assert all(d["version"] == 1 for d in drafts)
    here = {"start": {"line": line, "character": column}, "end": {"line": line, "character": column}}
    mine = [d for d in drafts if d["range"] == here]
    assert [d["step"] for d in mine] == sorted(d["step"] for d in mine)
    assert mine[-1]["final"] is True and mine[-1]["maxSteps"] >= mine[-1]["step"]
    assert mine[-1]["text"] == item.insert_text  # the final draft is the answer, checks included
    # Every request's last draft is final, and only the last.
    by_request: dict[object, list[dict[str, object]]] = {}
    for draft in drafts:
        by_request.setdefault(draft["requestId"], []).append(draft)
    for sequence in by_request.values():
        assert [d["final"] for d in sequence] == [False] * (len(sequence) - 1) + [True]


async def test_rest_of_line_hole_stops_at_the_end_of_the_line(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    for line, column in candidate_positions(SOURCE):
        content = SOURCE.split("\n")[line]
        if content.strip() and 0 < column < len(content.rstrip()) + 1 and column > len(content) - len(content.lstrip()):
            result = await inline(client, URI, line, column)
            assert result is not None
            for item in result.items:
                assert "\n" not in str(item.insert_text)


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
    (line, column), item = await first_suggestion(client, SOURCE, min_length=2)
    suggestion = str(item.insert_text)
    completed = (await info(client))["jobs"]["completed"]
    typed = suggestion[0]
    change(client, URI, 2, (line, column), (line, column), typed)
    follow = await inline(client, URI, line, column + len(typed.encode("utf-16-le")) // 2)
    assert follow is not None and follow.items
    assert follow.items[0].insert_text == suggestion[1:]
    state = await info(client)
    assert state["typeThroughHits"] == 1
    assert state["jobs"]["completed"] == completed


async def prefetches_encoded(client: LanguageClient, count: int) -> dict[str, Any]:
    """Poll ``dg.info`` until ``count`` prefetches have been encoded."""
    for _ in range(600):
        state = await info(client)
        if state["prefetch"]["encoded"] >= count:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"no prefetch encoded: {state['prefetch']}")


async def test_an_edit_prefetches_the_prompt_its_request_then_reuses(client: LanguageClient) -> None:
    open_document(client, URI, SOURCE)
    await inline(client, URI, 7, 4)  # the prompt cache now holds another cursor's prompt
    before = (await info(client))["promptCache"]
    change(client, URI, 2, (3, 19), (3, 19), " +")  # typed at the end of "    total = sum(xs)"
    state = await prefetches_encoded(client, 1)
    assert state["prefetch"] == {"scheduled": 1, "encoded": 1, "dropped": 0, "unsupported": 0, "failed": 0, "joined": 0, "running": False}
    assert state["promptCache"]["prompts"] == before["prompts"] + 1
    assert state["promptCache"]["last"]["encodedTokens"] > 0
    result = await inline(client, URI, 3, 21)
    assert result is not None
    after = (await info(client))["promptCache"]
    assert after["prompts"] == before["prompts"] + 2
    assert after["last"]["encodedTokens"] == 0  # the request found its whole prompt encoded
    assert after["last"]["reusedTokens"] == after["last"]["promptTokens"] == state["promptCache"]["last"]["promptTokens"]


async def reconfigure(client: LanguageClient, **completion: Any) -> dict[str, Any]:
    """Send ``completion`` options (didChangeConfiguration) and wait until the server shows them; its ``dg.info``."""
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgLsp": session_options(**completion)})
    )
    for _ in range(100):
        state = await info(client)
        if all(state["options"]["completion"].get(name) == value for name, value in completion.items()):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server did not take {completion}: {state['options']['completion']}")


async def test_speculation_answers_the_request_with_what_the_request_would_compute(client: LanguageClient) -> None:
    await reconfigure(client, speculate=True)
    open_document(client, URI, SOURCE)
    change(client, URI, 2, (3, 19), (3, 19), " +")
    before = await prefetches_encoded(client, 1)
    speculated = await inline(client, URI, 3, 21)
    after = await info(client)
    assert after["cacheHits"] == before["cacheHits"] + 1  # answered from the speculation's result
    assert after["jobs"]["completed"] == before["jobs"]["completed"]  # no denoising for the request itself
    # The same document state in a fresh document, computed by a request: the same answer.
    other = URI.replace("stats.py", "stats_copy.py")
    open_document(client, other, SOURCE[: SOURCE.index("sum(xs)") + 7] + " +" + SOURCE[SOURCE.index("sum(xs)") + 7 :])
    computed = await inline(client, other, 3, 21)
    assert speculated is not None and computed is not None
    assert [i.insert_text for i in speculated.items] == [i.insert_text for i in computed.items]
    assert (await info(client))["jobs"]["completed"] == before["jobs"]["completed"] + 1


async def test_a_request_joins_a_running_speculation_and_gets_its_drafts(client: LanguageClient) -> None:
    await reconfigure(client, speculate=True, maxSteps=256)
    open_document(client, URI, SOURCE)
    change(client, URI, 2, (6, 15), (6, 15), "\n    ")  # a new line in the body of spread(): a block hole
    for _ in range(400):
        if (await info(client))["prefetch"]["running"]:
            break
        await asyncio.sleep(0.005)
    result = await inline(client, URI, 7, 4)
    state = await info(client)
    assert state["prefetch"]["joined"] == 1 and state["prefetch"]["encoded"] == 1
    assert state["jobs"]["submitted"] == 0  # answered from the speculation, no request job
    drafts = [d for d in recorder(client).drafts if d["version"] == 2]
    assert drafts and drafts[-1]["final"] is True  # the speculation's drafts reached the request
    assert result is not None
    assert drafts[-1]["text"] == (result.items[0].insert_text if result.items else "")


async def test_an_edit_that_is_not_typing_prefetches_the_prompt_but_does_not_speculate(client: LanguageClient) -> None:
    await reconfigure(client, speculate=True)
    open_document(client, URI, SOURCE)
    change(client, URI, 2, (4, 0), (5, 0), "")  # a whole line deleted (Vim's dd): no one is typing there
    state = await prefetches_encoded(client, 1)
    assert state["promptCache"]["last"]["encodedTokens"] > 0  # its prompt was encoded ...
    result = await inline(client, URI, 4, 0)
    after = await info(client)
    assert after["cacheHits"] == state["cacheHits"]  # ... but nothing denoised: the request computed its answer
    assert after["jobs"]["completed"] == state["jobs"]["completed"] + 1
    assert after["promptCache"]["last"]["encodedTokens"] == 0  # on the prefetched prompt
    assert result is not None


async def test_prefetch_can_be_turned_off(client: LanguageClient) -> None:
    await reconfigure(client, prefetch=False)
    open_document(client, URI, SOURCE)
    change(client, URI, 2, (3, 19), (3, 19), " +")
    await inline(client, URI, 3, 21)  # answered after the edit: nothing was scheduled for it
    state = await info(client)
    assert state["prefetch"]["scheduled"] == 0 and state["prefetch"]["encoded"] == 0
    assert state["promptCache"]["last"]["encodedTokens"] > 0


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
