"""End-to-end: model faults while the language server runs: one clear message, the server alive, recovery by configuration."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path
from typing import Any

from tests.e2e.lsp_session import session_options
from tests.e2e.raw_lsp import RawClient, inline_params

URI = "file:///work/project/app.py"
SOURCE = "def area(w, h):\n    return w * h\n\nprint(area(2, 3))\n"
INLINE = "textDocument/inlineCompletion"


async def open_doc(client: RawClient, version: int = 1) -> None:
    await client.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": version, "text": SOURCE}})


async def edit(client: RawClient, version: int) -> None:
    """Type a space at the end of line 1 (so the next request is not answered from the cache)."""
    end = {"line": 1, "character": 16 + version}
    await client.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": version},
                                                   "contentChanges": [{"range": {"start": end, "end": end}, "text": " "}]})


async def configure(client: RawClient, settings: dict[str, Any]) -> dict[str, Any]:
    """didChangeConfiguration, then wait until the (re)load is over.

    A completion request is the barrier: it waits for a load in progress (the server reads
    messages in order, so the load has started by then).
    """
    await client.notify("workspace/didChangeConfiguration", {"settings": {"dgLsp": settings}})
    barrier = await client.request(INLINE, inline_params(URI, 0, 0))
    assert "result" in barrier, barrier
    return await client.info()


async def complete(client: RawClient, character: int) -> list[Any]:
    reply = await client.request(INLINE, inline_params(URI, 1, character))
    assert "result" in reply, reply  # answered, never an error
    return list(reply["result"]["items"])


async def test_a_shard_truncated_and_the_directory_removed_while_running(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    client = await RawClient.start(tmp_path / "server.log")
    options = session_options()
    options["model"] = str(model)
    assert (await client.initialize(options))["status"] == "ready"
    await open_doc(client)
    before = await complete(client, 16)
    assert before
    # Truncated under the running server: the resident weights do not depend on the file (no SIGBUS).
    os.truncate(model / "model.safetensors", 1000)
    await edit(client, 2)
    assert await complete(client, 17)
    shutil.rmtree(model)
    await edit(client, 3)
    assert await complete(client, 18)
    # A reload of the gone directory fails once, clearly, and keeps the model that works.
    state = await configure(client, {**options, "device": "cpu"})
    assert state["status"] == "ready" and "does not exist" in (state["error"] or "")
    failures = [m for m in client.messages_shown() if "could not load the model" in m]
    assert len(failures) == 1 and "keeping the previous model" in failures[0] and str(model) in failures[0]
    await edit(client, 4)
    assert await complete(client, 19)
    # Pointing at a good checkpoint recovers fully.
    state = await configure(client, {**options, "model": os.environ["DG_LSP_TEST_MODEL_2"]})
    assert state["status"] == "ready" and state["error"] is None
    await edit(client, 5)
    assert await complete(client, 20)
    assert await client.close() == 0


async def test_a_missing_device_turns_completions_off_until_reconfigured(tmp_path: Path) -> None:
    client = await RawClient.start(tmp_path / "server.log")
    options = {**session_options(), "device": "cuda"}
    state = await client.initialize(options)
    assert state["status"] == "failed" and "CUDA is not available" in state["error"]
    await open_doc(client)
    for character in (10, 11, 12):
        assert await complete(client, character) == []  # completions off, every request still answered
    shown = [m for m in client.messages_shown() if "CUDA" in m]
    assert len(shown) == 1 and "completions are off" in shown[0]
    state = await configure(client, {**options, "device": "cpu"})
    assert state["status"] == "ready" and state["error"] is None
    assert await complete(client, 16)
    assert await client.close() == 0


async def test_out_of_memory_while_loading(tmp_path: Path) -> None:
    """The server's address space is capped (a real limit, set with prlimit) before it loads a model."""
    client = await RawClient.start(tmp_path / "server.log")
    options = session_options()
    assert (await client.initialize(options))["status"] == "ready"
    await open_doc(client)
    assert await complete(client, 16)
    pid = client.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        size_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.prlimit(pid, resource.RLIMIT_AS, (size_kib * 1024 + 8 * 2**20, hard))  # 8 MiB of headroom
    try:
        state = await configure(client, {**options, "model": None})  # the embedded model: 32 MB of weights
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (soft, hard))
    assert "memory" in (state["error"] or "").lower(), state
    assert any("could not load the model" in m and "memory" in m.lower() for m in client.messages_shown())
    await edit(client, 2)
    assert await complete(client, 17) is not None  # the previous model still answers
    state = await configure(client, {**options, "model": None, "device": "cpu"})
    assert state["status"] == "ready" and state["error"] is None and state["model"] == "dg-code-small"
    assert await client.close() == 0
