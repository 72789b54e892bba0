"""Shared test setup: a tiny random-weight DiffusionGemma checkpoint built once per session.

The path is exported as ``DG_LSP_TEST_MODEL`` so that server processes started by
pytest-lsp fixtures (which start before fixture arguments resolve) can be pointed at it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the tiny checkpoints (seeded, so results are deterministic)."""
    from dg_lsp.testing import build_tiny_checkpoint

    # The same answers on every CPU: float32 for dtype "auto" whether or not the CPU has native
    # bfloat16, and no background compile of the step in server processes (minutes of CPU; the
    # background compile is tested in tests/unit/test_background_compile.py). Both inherited by
    # the servers the tests start.
    os.environ.setdefault("DG_LSP_CPU_DTYPE", "float32")
    os.environ.setdefault("DG_LSP_BACKGROUND_COMPILE", "0")

    base = Path(tempfile.mkdtemp(prefix="dg-lsp-test-"))
    os.environ["DG_LSP_TEST_MODEL"] = str(build_tiny_checkpoint(base / "tiny", seed=0))
    os.environ["DG_LSP_TEST_MODEL_2"] = str(build_tiny_checkpoint(base / "tiny-2", seed=1))
    from dg_lsp.testing_published import build_published_checkpoint

    # The published DiffusionGemma layout: Gemma's special ids, no FIM markers, chat template, sharded weights.
    os.environ["DG_LSP_TEST_PUBLISHED_MODEL"] = str(build_published_checkpoint(base / "published", seed=0))
    os.environ["DG_LSP_TEST_BASE"] = str(base)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = os.environ.get("DG_LSP_TEST_BASE")
    if base:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def published_model_dir() -> Path:
    """The tiny checkpoint in DiffusionGemma's published layout (chat format)."""
    return Path(os.environ["DG_LSP_TEST_PUBLISHED_MODEL"])


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny checkpoint directory."""
    return Path(os.environ["DG_LSP_TEST_MODEL"])
