"""End-to-end: the language server drives a checkpoint in DiffusionGemma's published layout (chat format)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.e2e.lsp_session import (
    SERVER,
    STATS_SOURCE,
    STATS_URI,
    Recorder,
    attach,
    change,
    denoising_started,
    info,
    inline,
    open_document,
    start,
)

URI, SOURCE = STATS_URI, STATS_SOURCE


def published_options(**completion: Any) -> dict[str, Any]:
    """The published-format checkpoint with the checkpoint's own sampler (no maxSteps set)."""
    return {
        "model": os.environ["DG_LSP_TEST_PUBLISHED_MODEL"],
        "completion": {"parseCheck": False, "draftIntervalMs": 0, **completion},
    }


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    lsp_client.recorder = attach(lsp_client)  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


def recorder(client: LanguageClient) -> Recorder:
    return client.recorder  # type: ignore[attr-defined,no-any-return]


async def test_info_reports_the_chat_format_and_the_checkpoint_sampler(client: LanguageClient) -> None:
    await start(client, published_options())
    state = await info(client)
    assert state["status"] == "ready", state["error"]
    assert state["modelPath"] == os.environ["DG_LSP_TEST_PUBLISHED_MODEL"]
    assert state["promptFormat"] == "chat" and state["eosIds"] == [1, 50, 106]
    completion = state["sampler"]["completion"]
    assert (completion["maxSteps"], completion["entropyBound"], completion["tMin"], completion["tMax"]) == (
        48, 0.1, 0.4, 0.8,
    )
    assert (completion["stabilityThreshold"], completion["confidenceThreshold"]) == (1, 0.005)
    assert state["sampler"]["rewrite"]["maxSteps"] == 48
    assert state["options"]["completion"]["maxSteps"] is None  # unset: the checkpoint's value applies


async def test_a_user_setting_overrides_the_checkpoint_sampler(client: LanguageClient) -> None:
    await start(client, published_options(maxSteps=6, entropyBound=0.3))
    completion = (await info(client))["sampler"]["completion"]
    assert (completion["maxSteps"], completion["entropyBound"], completion["tMax"]) == (6, 0.3, 0.8)


async def test_completion_streams_drafts_and_types_through(client: LanguageClient) -> None:
    await start(client, published_options())
    open_document(client, URI, SOURCE)
    found: tuple[int, int, str] | None = None
    for line, column in [(3, 12), (4, 11), (7, 8), (8, 11), (2, 9)]:
        result = await inline(client, URI, line, column)
        assert result is not None
        if result.items and len(str(result.items[0].insert_text)) >= 2:
            found = (line, column, str(result.items[0].insert_text))
            break
    assert found is not None, "no position gave a suggestion"
    line, column, suggestion = found
    await asyncio.sleep(0.2)
    here = {"start": {"line": line, "character": column}, "end": {"line": line, "character": column}}
    mine = [d for d in recorder(client).drafts if d["range"] == here]
    assert mine and mine[-1]["final"] is True
    assert [d["step"] for d in mine] == sorted(d["step"] for d in mine)
    # Typing the suggestion's first character is answered from the suggestion, without a model run.
    completed = (await info(client))["jobs"]["completed"]
    change(client, URI, 2, (line, column), (line, column), suggestion[0])
    follow = await inline(client, URI, line, column + len(suggestion[0].encode("utf-16-le")) // 2)
    assert follow is not None and follow.items and follow.items[0].insert_text == suggestion[1:]
    state = await info(client)
    assert state["typeThroughHits"] == 1 and state["jobs"]["completed"] == completed


async def test_an_edit_during_denoising_never_returns_a_stale_result(client: LanguageClient) -> None:
    await start(client, published_options(maxSteps=256))
    open_document(client, URI, SOURCE)
    task = asyncio.ensure_future(inline(client, URI, 7, 8))
    await denoising_started(recorder(client), URI, 1)
    change(client, URI, 2, (7, 8), (7, 8), "w")
    result = await task
    assert result is not None and not result.items
    assert [d for d in recorder(client).drafts if d["version"] == 2] == []
    assert (await info(client))["status"] == "ready"


async def test_rewrite_selection_in_the_chat_format(client: LanguageClient) -> None:
    await start(client, published_options(maxSteps=4))
    open_document(client, URI, SOURCE)
    selected = {"start": {"line": 3, "character": 4}, "end": {"line": 4, "character": 26}}
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="dg.rewriteSelection", arguments=[URI, selected, {"apply": False}])
    )
    assert isinstance(result, dict) and result["uri"] == URI and result["version"] == 1
    assert "error" not in result or result["error"] is None
    if result["text"] is not None:
        assert isinstance(result["text"], str) and result["edit"] is not None
    assert recorder(client).edits == []
    assert (await info(client))["jobs"]["completed"] >= 1


async def test_a_checkpoint_without_a_chat_template_is_reported_once(client: LanguageClient, tmp_path: Path) -> None:
    broken = tmp_path / "no-template"
    shutil.copytree(os.environ["DG_LSP_TEST_PUBLISHED_MODEL"], broken)
    (broken / "chat_template.jinja").unlink()
    await start(client, {"model": str(broken)})
    state = await info(client)
    assert state["status"] == "failed" and "no chat template" in state["error"]
    open_document(client, URI, SOURCE)
    for _ in range(2):
        result = await inline(client, URI, 3, 12)
        assert result is not None and not result.items
    messages = [m for m in client.messages if "could not load" in m.message]  # type: ignore[attr-defined]
    assert len(messages) == 1 and "no chat template" in messages[0].message


async def test_forcing_fim_on_a_chat_checkpoint_is_reported(client: LanguageClient) -> None:
    await start(client, {**published_options(), "promptFormat": "fim"})
    state = await info(client)
    assert state["status"] == "failed" and "promptFormat is fim" in state["error"]
