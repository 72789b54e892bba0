"""Helpers for end-to-end tests: start dg-lsp over stdio with pytest-lsp and talk to it."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "dg_lsp", "serve", "--log-level", "warning"])

#: A small Python document the session tests complete in.
STATS_URI = "file:///work/project/stats.py"
STATS_SOURCE = (
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

CAPABILITIES = types.ClientCapabilities(
    window=types.WindowClientCapabilities(work_done_progress=True),
    workspace=types.WorkspaceClientCapabilities(
        apply_edit=True, workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)
    ),
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities(dynamic_registration=False)
    ),
)


def session_options(**completion: Any) -> dict[str, Any]:
    """initializationOptions for the tiny random model: no parse check (its output is noise)."""
    return {
        "model": os.environ["DG_LSP_TEST_MODEL"],
        "completion": {"parseCheck": False, "draftIntervalMs": 0, **completion},
    }


def plain(value: Any) -> Any:
    """pygls hands custom notifications over as nested namedtuples: turn them into dicts."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class Recorder:
    """Drafts and applied edits the server sent (shown messages are in ``client.messages``)."""

    drafts: list[dict[str, Any]] = field(default_factory=list)
    edits: list[types.WorkspaceEdit] = field(default_factory=list)


def attach(client: LanguageClient) -> Recorder:
    """Register handlers that record drafts, applied edits and shown messages."""
    recorder = Recorder()

    @client.feature("dg/draft")
    def on_draft(params: Any) -> None:
        recorder.drafts.append(plain(params))

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def on_apply(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        recorder.edits.append(params.edit)
        return types.ApplyWorkspaceEditResult(applied=True)

    return recorder


async def denoising_started(recorder: Recorder, uri: str, version: int, polls: int = 2000) -> None:
    """Wait for the first ``dg/draft`` of ``uri`` at ``version``: a job is denoising right now.

    Tests that cancel or edit *during* denoising start from this instead of a fixed sleep, so they do
    not depend on how fast the machine is.
    """
    for _ in range(polls):
        if any(d["uri"] == uri and d["version"] == version for d in recorder.drafts):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"no dg/draft for {uri} version {version}")


async def start(client: LanguageClient, options: dict[str, Any]) -> types.InitializeResult:
    """Initialise the session and wait until the model has loaded (or failed)."""
    result = await client.initialize_session(
        types.InitializeParams(capabilities=CAPABILITIES, initialization_options=options, process_id=os.getpid())
    )
    await wait_ready(client)
    return result


async def info(client: LanguageClient) -> dict[str, Any]:
    """The server's ``dg.info``."""
    result = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="dg.info"))
    assert isinstance(result, dict)
    return result


async def wait_ready(client: LanguageClient, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``dg.info`` until the model is ready or failed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await info(client)
        if state["status"] != "loading":
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("model did not load")
        await asyncio.sleep(0.1)


def open_document(client: LanguageClient, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
    """Send didOpen."""
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text)
        )
    )


def change(client: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
    """Send an incremental didChange."""
    rng = types.Range(start=types.Position(*start), end=types.Position(*end))
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)],
        )
    )


async def inline(client: LanguageClient, uri: str, line: int, character: int) -> types.InlineCompletionList | None:
    """Request an inline completion."""
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    assert result is None or isinstance(result, types.InlineCompletionList)
    return result
