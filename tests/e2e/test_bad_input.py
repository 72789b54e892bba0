"""End-to-end: bad input gets a clear error, loses nothing, and never takes the server down."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.e2e.lsp_session import SERVER, attach, change, denoising_started, inline, info, open_document, start, session_options

URI = "file:///work/project/app.py"
SOURCE = "def area(w, h):\n    return w * h\n\nprint(area(2, 3))\n"


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    lsp_client.recorder = attach(lsp_client)  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


async def alive(client: LanguageClient) -> None:
    """The server still answers and still completes."""
    state = await info(client)
    assert state["status"] in ("ready", "failed")


async def test_position_past_the_end_is_a_clear_error(client: LanguageClient) -> None:
    await start(client, session_options())
    open_document(client, URI, SOURCE)
    with pytest.raises(JsonRpcException, match="outside"):
        await inline(client, URI, 40, 0)
    assert (await inline(client, URI, 1, 11)) is not None
    await alive(client)


async def test_unknown_uri_is_a_clear_error(client: LanguageClient) -> None:
    await start(client, session_options())
    with pytest.raises(JsonRpcException, match="not open"):
        await inline(client, "file:///nowhere/ghost.py", 0, 0)
    with pytest.raises(JsonRpcException, match="not open"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(
                command="dg.rewriteSelection",
                arguments=["file:///nowhere/ghost.py", {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}}],
            )
        )
    await alive(client)


async def test_malformed_rewrite_arguments(client: LanguageClient) -> None:
    await start(client, session_options())
    open_document(client, URI, SOURCE)
    with pytest.raises(JsonRpcException, match="takes"):
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[]))
    with pytest.raises(JsonRpcException, match="invalid range"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, {"start": 3}])
        )
    await alive(client)


async def test_five_megabyte_file(client: LanguageClient) -> None:
    await start(client, session_options(contextTokens=512))
    block = "def f{0}(x):\n    return x + {0}\n\n"
    text = "".join(block.format(i) for i in range(5 * 1024 * 1024 // 32))
    assert len(text) > 5_000_000
    open_document(client, URI, text)
    lines = text.count("\n")
    result = await inline(client, URI, lines // 2 + 1, 11)
    assert result is not None
    change(client, URI, 2, (10, 0), (10, 0), "# edited\n")
    result = await inline(client, URI, lines // 2, 4)
    assert result is not None
    await alive(client)


async def test_minified_one_line_file(client: LanguageClient) -> None:
    await start(client, session_options(contextTokens=256))
    uri = "file:///work/project/bundle.min.js"
    text = "var a=1;" + "function f(n){return n*2}var b=f(a);" * 30000
    open_document(client, uri, text, language_id="javascript")
    result = await inline(client, uri, 0, len(text) // 2)
    assert result is not None
    await alive(client)


async def test_unsupported_language_falls_back_to_lines(client: LanguageClient) -> None:
    await start(client, session_options())
    uri = "file:///work/project/notes.xyz"
    open_document(client, uri, "alpha\nbeta \ngamma\n", language_id="plaintext-of-sorts")
    result = await inline(client, uri, 1, 5)
    assert result is not None
    await alive(client)


async def test_missing_model_directory(client: LanguageClient, tmp_path: Path) -> None:
    await start(client, {"model": str(tmp_path / "no-such-model"), "completion": {"parseCheck": False}})
    state = await info(client)
    assert state["status"] == "failed" and "does not exist" in state["error"]
    open_document(client, URI, SOURCE)
    for _ in range(3):
        result = await inline(client, URI, 1, 11)
        assert result is not None and not result.items
    messages = [m for m in client.messages if "could not load" in m.message]  # type: ignore[attr-defined]
    assert len(messages) == 1 and "does not exist" in messages[0].message
    assert messages[0].type == types.MessageType.Error


async def test_corrupt_model_directory(client: LanguageClient, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(os.environ["DG_LSP_TEST_MODEL"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    await start(client, {"model": str(broken)})
    state = await info(client)
    assert state["status"] == "failed" and state["error"]
    open_document(client, URI, SOURCE)
    result = await inline(client, URI, 1, 11)
    assert result is not None and not result.items
    assert len([m for m in client.messages if "could not load" in m.message]) == 1  # type: ignore[attr-defined]


async def test_out_of_memory_on_load(client: LanguageClient, tmp_path: Path) -> None:
    """A config far larger than this machine's memory: the load fails with an OOM message."""
    huge = tmp_path / "huge"
    shutil.copytree(os.environ["DG_LSP_TEST_MODEL"], huge)
    config = json.loads((huge / "config.json").read_text())
    config["text_config"]["hidden_size"] = 65536
    config["text_config"]["intermediate_size"] = 262144
    config["text_config"]["num_hidden_layers"] = 64
    config["text_config"]["layer_types"] = ["full_attention"] * 64
    (huge / "config.json").write_text(json.dumps(config))
    await start(client, {"model": str(huge)})
    state = await info(client)
    assert state["status"] == "failed"
    assert "memory" in state["error"].lower()
    await alive(client)


async def test_fifty_requests_in_a_second_compute_only_the_last(client: LanguageClient) -> None:
    await start(client, session_options(maxSteps=64))
    open_document(client, URI, SOURCE)
    requests = []
    for i in range(50):
        requests.append(asyncio.ensure_future(inline(client, URI, 1, 4 + (i % 8))))
        await asyncio.sleep(0)  # a burst: each request supersedes the previous one while it denoises
    results = await asyncio.gather(*requests)
    assert all(r is not None for r in results)
    state = await info(client)
    jobs = state["jobs"]
    assert jobs["submitted"] == 50
    assert jobs["completed"] == 1, jobs
    assert jobs["cancelled"] == 49
    assert all(r is not None and not r.items for r in results[:-1])


async def test_cancel_request_stops_the_job(client: LanguageClient) -> None:
    await start(client, session_options(maxSteps=256))
    open_document(client, URI, SOURCE)
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        position=types.Position(line=1, character=11),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )
    future = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="inline-1")
    )
    await denoising_started(client.recorder, URI, 1)  # type: ignore[attr-defined]
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="inline-1"))
    with pytest.raises(JsonRpcException, match="cancel"):
        await future
    for _ in range(50):
        state = await info(client)
        if state["jobs"]["cancelled"] == 1:
            break
        await asyncio.sleep(0.05)
    assert state["jobs"]["cancelled"] == 1 and state["jobs"]["completed"] == 0
    await alive(client)


async def test_edit_during_denoising_never_returns_a_stale_result(client: LanguageClient) -> None:
    await start(client, session_options(maxSteps=256))
    open_document(client, URI, SOURCE)
    task = asyncio.ensure_future(inline(client, URI, 1, 11))
    await denoising_started(client.recorder, URI, 1)  # type: ignore[attr-defined]
    change(client, URI, 2, (1, 11), (1, 11), "w")
    result = await task
    assert result is not None and not result.items
    drafts_after = [d for d in client.recorder.drafts if d["version"] == 2]  # type: ignore[attr-defined]
    assert drafts_after == []


async def test_stale_rewrite_is_not_applied(client: LanguageClient) -> None:
    await start(client, {**session_options(), "rewrite": {"maxSteps": 256}})
    open_document(client, URI, SOURCE)
    selected = {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 16}}
    task = asyncio.ensure_future(
        client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected])
        )
    )
    await asyncio.sleep(0.15)
    change(client, URI, 2, (0, 0), (0, 0), "# header\n")
    result = await task
    assert result["applied"] is False and result["edit"] is None
    assert client.recorder.edits == []  # type: ignore[attr-defined]


async def test_invalid_configuration_is_reported_and_defaulted(client: LanguageClient) -> None:
    options = session_options(maxSteps=-3, draftIntervalMs="soon")
    options["colour"] = "blue"
    await start(client, options)
    state = await info(client)
    assert state["options"]["completion"]["maxSteps"] is None  # the default: unset, the model's own applies
    assert state["sampler"]["completion"]["maxSteps"] == 16
    assert state["options"]["completion"]["draftIntervalMs"] == 30
    texts = [m.message for m in client.messages]
    assert any("completion.maxSteps" in t for t in texts)
    assert any("completion.draftIntervalMs" in t for t in texts)
    assert any("colour" in t for t in texts)


async def test_model_swap_by_configuration(client: LanguageClient) -> None:
    await start(client, session_options())
    open_document(client, URI, SOURCE)
    before = await inline(client, URI, 1, 11)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"dgLsp": {**session_options(), "model": os.environ["DG_LSP_TEST_MODEL_2"]}}
        )
    )
    for _ in range(100):
        state = await info(client)
        if state["modelPath"] == os.environ["DG_LSP_TEST_MODEL_2"] and state["status"] == "ready":
            break
        await asyncio.sleep(0.1)
    assert state["modelPath"] == os.environ["DG_LSP_TEST_MODEL_2"]
    completed = state["jobs"]["completed"]
    after = await inline(client, URI, 1, 11)
    assert before is not None and after is not None
    # The same request is answered by the new model, not from the old model's cache.
    assert (await info(client))["jobs"]["completed"] == completed + 1


async def test_rewrite_longer_than_the_canvas_is_refused_and_changes_nothing(client: LanguageClient) -> None:
    await start(client, session_options())
    text = "values = [\n" + "".join(f"    {i},\n" for i in range(400)) + "]\n"
    open_document(client, URI, text)
    selected = {"start": {"line": 1, "character": 0}, "end": {"line": 400, "character": 0}}
    with pytest.raises(JsonRpcException, match="select less text"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected])
        )
    assert client.recorder.edits == []  # type: ignore[attr-defined]
    await alive(client)
