"""End-to-end: loading as users have it, from the command line and the language server.

A hub id read from the huggingface_hub cache, ``--quantize`` and the ``quantize`` setting, a
hub id that is not downloaded, and a model refused for lack of memory: one clear sentence each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_lsp
from pytest_lsp import LanguageClient

from tests.e2e.lsp_session import SERVER, STATS_SOURCE, STATS_URI, attach, info, inline, open_document, start

ROOT = Path(__file__).resolve().parents[2]
#: A hang guard for the subprocess, not a performance limit.
GUARD_S = 300
REPO_ID = "google/dg-tiny-it"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def dg_lsp(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("DG_LSP_MODEL", "DG_LSP_QUANTIZE")} | env
    return subprocess.run(
        [sys.executable, "-m", "dg_lsp", *map(str, args)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=GUARD_S, check=False,
    )


@pytest.fixture
def hub_cache(published_model_dir: Path, tmp_path: Path) -> Path:
    """A huggingface_hub cache holding the published-layout checkpoint as ``google/dg-tiny-it``."""
    repo = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT, encoding="ascii")
    shutil.copytree(published_model_dir, repo / "snapshots" / COMMIT)
    return tmp_path / "hub"


def test_info_by_hub_id_with_fp8_weights(hub_cache: Path) -> None:
    proc = dg_lsp("info", "--model", REPO_ID, "--device", "cpu", "--quantize", "fp8",
                  HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert (facts["model"], facts["quantize"], facts["promptFormat"]) == (REPO_ID, "fp8", "chat")
    assert facts["modelPath"].startswith(str(hub_cache))
    assert "Failed to load" not in proc.stderr and "register_constant" not in proc.stderr  # torchao's import noise


def test_a_hub_id_not_downloaded_is_one_clear_sentence(tmp_path: Path) -> None:
    proc = dg_lsp("info", "--model", "google/diffusiongemma-26B-A4B-it", "--device", "cpu",
                  HF_HUB_CACHE=str(tmp_path / "empty"))
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "dg-lsp: google/diffusiongemma-26B-A4B-it is neither a local directory nor in the Hugging Face cache "
        f"({tmp_path / 'empty'}); dg-lsp does not download models: run `hf download google/diffusiongemma-26B-A4B-it` "
        "(huggingface_hub < 1.0: `huggingface-cli download google/diffusiongemma-26B-A4B-it`) and start again"
    )


def test_a_model_too_large_for_the_memory_is_refused(published_model_dir: Path) -> None:
    proc = dg_lsp("info", "--model", published_model_dir, "--device", "cpu", DG_LSP_MAX_MEMORY="1MiB")
    assert proc.returncode != 0 and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dg-lsp: {published_model_dir.name} needs about ")
    assert "but DG_LSP_MAX_MEMORY allows 0.0 GiB" in last and "dg-lsp engine-serve" in last


def test_an_unknown_quantization_is_an_argument_error(published_model_dir: Path) -> None:
    proc = dg_lsp("info", "--model", published_model_dir, "--quantize", "int4")
    assert proc.returncode == 2 and "invalid choice: 'int4'" in proc.stderr


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    lsp_client.recorder = attach(lsp_client)  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


async def test_the_quantize_setting_loads_int8_weights_and_completes(client: LanguageClient) -> None:
    await start(client, {"model": os.environ["DG_LSP_TEST_PUBLISHED_MODEL"], "quantize": "int8",
                         "completion": {"parseCheck": False, "draftIntervalMs": 0, "maxSteps": 4}})
    state = await info(client)
    assert state["status"] == "ready", state["error"]
    assert state["quantize"] == "int8" and state["options"]["quantize"] == "int8"
    open_document(client, STATS_URI, STATS_SOURCE)
    result = await inline(client, STATS_URI, 4, 11)
    assert result is not None


async def test_a_missing_shard_is_named_once(client: LanguageClient, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(os.environ["DG_LSP_TEST_PUBLISHED_MODEL"], tmp_path / "published"))
    index = json.loads((broken / "model.safetensors.index.json").read_text(encoding="utf-8"))
    gone = sorted(set(index["weight_map"].values()))[-1]
    (broken / gone).unlink()
    await start(client, {"model": str(broken)})
    state = await info(client)
    assert state["status"] == "failed"
    assert state["error"] == f"{broken} is missing weight shard {gone} (listed in model.safetensors.index.json)"
    open_document(client, STATS_URI, STATS_SOURCE)
    for _ in range(2):
        result = await inline(client, STATS_URI, 4, 11)
        assert result is not None and not result.items
    shown = [m.message for m in client.messages if gone in m.message]  # type: ignore[attr-defined]
    assert len(shown) == 1
