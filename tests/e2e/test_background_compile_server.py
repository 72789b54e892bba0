"""End-to-end: ``compile: "auto"`` on a CPU answers at once and swaps the compiled step in later.

A real compile takes a minute or more on one core, so this runs only with ``DG_LSP_TEST_COMPILE=1``
(the swap logic itself is tested without compiling in ``tests/unit/test_background_compile.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from tests.e2e.lsp_session import STATS_SOURCE, STATS_URI, attach, inline, info, open_document, start, session_options

pytestmark = pytest.mark.skipif(os.environ.get("DG_LSP_TEST_COMPILE") != "1", reason="set DG_LSP_TEST_COMPILE=1 (minutes)")

SERVER = ClientServerConfig(
    server_command=[sys.executable, "-m", "dg_lsp", "serve", "--log-level", "warning"],
    server_env={**os.environ, "DG_LSP_BACKGROUND_COMPILE": "1"},  # the suite turns it off for other servers
)


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    attach(lsp_client)
    await start(lsp_client, session_options(maxSteps=4))
    yield
    await lsp_client.shutdown_session()


@pytest.mark.timeout(1800)
async def test_ready_at_once_then_the_compiled_step_is_swapped_in(client: LanguageClient) -> None:
    state = await info(client)
    assert state["status"] == "ready" and state["dtype"] == "float32"  # the suite pins float32
    assert state["compile"]["setting"] == "auto" and state["compile"]["when"] == "background"
    assert state["compile"]["state"] in ("pending", "compiling")
    open_document(client, STATS_URI, STATS_SOURCE)
    lines = STATS_SOURCE.split("\n")
    await inline(client, STATS_URI, 2, len(lines[2]))  # answered while compiling
    for _ in range(3600):
        state = await info(client)
        if state["compile"]["state"] in ("ready", "failed"):
            break
        await asyncio.sleep(0.5)
    assert state["compile"]["state"] == "ready", state["compile"]
    assert state["compile"]["done"] == len(state["compile"]["shapes"])
    await inline(client, STATS_URI, 2, len(lines[2]))  # answered with the compiled step
    assert (await info(client))["jobs"]["failed"] == 0
    for _ in range(200):  # the progress end is sent from the event loop right after the swap
        reports = [r for values in client.progress_reports.values() for r in values]
        ends = [r for r in reports if isinstance(r, types.WorkDoneProgressEnd) and r.message == "ready"]
        if ends:
            break
        await asyncio.sleep(0.05)
    begins = [r for r in reports if isinstance(r, types.WorkDoneProgressBegin)]
    assert any(b.message == "compiling the denoising step" for b in begins)
    assert any(isinstance(r, types.WorkDoneProgressReport) and "canvas" in (r.message or "") for r in reports)
    assert ends
