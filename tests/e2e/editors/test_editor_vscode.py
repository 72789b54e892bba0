"""VS Code end to end: the packaged extension (.vsix) installed into code-server, driven in
Debian's Chromium through playwright-core, against the real server with the tiny checkpoint.

The extension writes what it receives from the server to ``$DG_LSP_TEST_LOG`` (JSON lines); the
test compares the ghost text read from the DOM with the server's answer for that position, and
the files on disk after accepting with Tab and after accepting a rewrite.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import HERE, ROOT, VSCodeTools, python_fixture

pytestmark = [pytest.mark.editor, pytest.mark.timeout(420)]

SCREENSHOTS = ROOT / "docs" / "screenshots"
# Refresh the committed screenshots only on request (DG_UPDATE_SCREENSHOTS=1).
UPDATE_SCREENSHOTS = os.environ.get("DG_UPDATE_SCREENSHOTS") == "1"

FIXTURE = python_fixture()
SOURCE = FIXTURE.text
RW = FIXTURE.rewrite_line  # 1-based; the rewrite covers lines RW and RW + 1
TYPED = "    return math.sqrt(sum(x * x for x in xs))"


def eol(text: str) -> str:
    """LSP line breaks as \\n: VS Code applies \\r\\n and a lone \\r as line breaks."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def visible(text: str) -> str:
    """Text as compared with the DOM: control characters (which VS Code draws as symbols or
    not at all) dropped, as are the Unicode "control pictures" it may draw them with."""
    return "".join(c for c in text if not (ord(c) < 32 and c not in "\t\n") and c != "\x7f" and not 0x2400 <= ord(c) <= 0x2421)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(server_cmd: list[str], model: Path, log: Path) -> dict[str, Any]:
    return {
        "dgLsp.serverCommand": [*server_cmd, "--log-level", "info"],
        "dgLsp.model": str(model),
        "dgLsp.logFile": str(log),
        "dgLsp.completion.parseCheck": False,
        "dgLsp.completion.seed": 0,
        "workbench.startupEditor": "none",
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "workbench.tips.enabled": False,
        "workbench.colorTheme": "Default Dark Modern",
        "telemetry.telemetryLevel": "off",
        "security.workspace.trust.enabled": False,
        "extensions.ignoreRecommendations": True,
        "update.mode": "none",
        "chat.disableAIFeatures": True,
        "window.commandCenter": False,
        "files.autoSave": "off",
        "editor.inlineSuggest.enabled": True,
        # Keep the word-based suggest widget away: Tab must go to the inline suggestion.
        "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
        "editor.suggestOnTriggerCharacters": False,
        "editor.wordBasedSuggestions": "off",
        "editor.autoClosingBrackets": "never",
        "editor.minimap.enabled": False,
        "editor.fontSize": 15,
    }


@pytest.fixture(scope="module")
def code_server(
    tmp_path_factory: pytest.TempPathFactory,
    vscode_tools: VSCodeTools,
    server_cmd: list[str],
    tiny_model_dir: Path,
    artifacts_dir: Path,
) -> Any:
    work = tmp_path_factory.mktemp("vscode")
    project, user_data, extensions = work / "project", work / "user-data", work / "extensions"
    for d in (project, user_data / "User", user_data / "Machine", extensions):
        d.mkdir(parents=True)
    (project / FIXTURE.name).write_text(SOURCE, encoding="utf-8")
    server_log = artifacts_dir / "vscode-server.log"
    server_log.unlink(missing_ok=True)
    # User settings, and the machine-scoped ones again as remote machine settings (code-server
    # is a remote setup: machine-scoped settings belong to the machine).
    user_settings = settings(server_cmd, tiny_model_dir, server_log)
    (user_data / "User" / "settings.json").write_text(json.dumps(user_settings, indent=2), encoding="utf-8")
    machine = {k: v for k, v in user_settings.items() if k.startswith("dgLsp.")}
    (user_data / "Machine" / "settings.json").write_text(json.dumps(machine, indent=2), encoding="utf-8")
    config = work / "config.yaml"
    config.write_text("", encoding="utf-8")
    test_log = work / "extension-events.jsonl"
    entry = (vscode_tools.code_server.parent / os.readlink(vscode_tools.code_server)).resolve()
    base = [str(vscode_tools.node), str(entry), "--config", str(config), "--user-data-dir", str(user_data),
            "--extensions-dir", str(extensions)]
    env = {
        **os.environ,
        "PATH": f"{vscode_tools.node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DG_LSP_TEST_LOG": str(test_log),
        "HOME": str(work / "home"),
    }
    subprocess.run([*base, "--install-extension", str(vscode_tools.vsix)], check=True, env=env,
                   capture_output=True, timeout=120)
    port = free_port()
    cs_log = (artifacts_dir / "code-server.log").open("w")
    proc = subprocess.Popen(
        [*base, "--bind-addr", f"127.0.0.1:{port}", "--auth", "none", "--disable-telemetry",
         "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override",
         str(project)],
        env=env,
        stdout=cs_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"code-server did not start; see {artifacts_dir / 'code-server.log'}")
        time.sleep(0.3)
    try:
        yield {"url": f"{url}/?folder={project}", "project": project, "test_log": test_log, "env": env, "work": work}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        cs_log.close()
        if test_log.exists():
            shutil.copyfile(test_log, artifacts_dir / "vscode-extension-events.jsonl")


def test_inline_suggestion_and_rewrite_in_code_server(
    code_server: dict[str, Any], vscode_tools: VSCodeTools, artifacts_dir: Path
) -> None:
    path: Path = code_server["project"] / FIXTURE.name
    result_file = artifacts_dir / "vscode-driver-result.json"
    result_file.unlink(missing_ok=True)
    cfg = {
        "url": code_server["url"],
        "chromium": str(vscode_tools.chromium),
        "artifacts": str(artifacts_dir),
        "testLog": str(code_server["test_log"]),
        "result": str(result_file),
        "fileName": FIXTURE.name,
        "filePath": str(path),
        "lastLine": SOURCE.count("\n"),
        "typeText": TYPED,
        "rewrite": {"line": RW, "lines": 2},
        "readyTimeoutMs": 150_000,
        "completionTimeoutMs": 60_000,
        "rewriteTimeoutMs": 120_000,
    }
    cfg_file = code_server["work"] / "driver.json"
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    proc = subprocess.run(
        [str(vscode_tools.node), str(HERE / "vscode_driver.mjs"), str(cfg_file)],
        env=code_server["env"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    (artifacts_dir / "vscode-driver.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    assert result_file.exists(), proc.stdout + proc.stderr
    out = json.loads(result_file.read_text(encoding="utf-8"))
    assert not out["errors"], "\n".join(out["errors"]) + "\n" + proc.stdout[-3000:]
    assert proc.returncode == 0

    # Status bar: model, device (and, after the first completion, latency).
    assert "tiny" in out["statusBar"] and "cpu" in out["statusBar"], out["statusBar"]

    # The ghost text in the DOM is the server's answer for that very position.
    ghost, entry, typed = out["ghost"]["dom"], out["ghost"]["entry"], out["ghost"]["typed"]
    item = next(i for i in entry["items"] if i["insertText"])
    line = SOURCE.count("\n")
    assert entry["position"] == {"line": line, "character": len(typed)}
    assert item["range"]["start"] == entry["position"]
    assert visible(ghost["text"]) == visible(eol(item["insertText"])), (ghost, item)

    # Every keystroke's edit scheduled a prompt prefetch, and each one ran or was dropped by the request that
    # followed (VS Code sometimes asks within the prefetch's 15 ms delay): none failed, none is left over.
    prefetch = out["prefetch"]
    assert prefetch["scheduled"] >= len(typed), prefetch
    assert prefetch["encoded"] + prefetch["dropped"] == prefetch["scheduled"], prefetch
    assert prefetch["failed"] == 0 and prefetch["running"] is False, prefetch

    # Tab accepted exactly that text; the saved file has it.
    r = item["range"]
    assert r["start"] == r["end"]  # an insertion at the cursor
    after_accept = SOURCE + typed + eol(item["insertText"])
    assert out["afterAccept"] == after_accept

    # Rewrite: apply=false proposal for lines 5-6, shown as a diff, accepted, saved.
    proposal = out["rewrite"]["proposal"]
    assert proposal["applied"] is False
    assert proposal["range"] == {"start": {"line": RW - 1, "character": 0}, "end": {"line": RW + 1, "character": 0}}
    assert isinstance(proposal["text"], str), proposal
    assert out["rewrite"]["applied"]["event"] == "rewriteApplied" and out["rewrite"]["applied"]["ok"] is True
    lines = after_accept.split("\n")
    expected = "\n".join(lines[: RW - 1]) + "\n" + eol(proposal["text"]) + "\n".join(lines[RW + 1 :])
    assert out["afterRewrite"] == expected
    assert path.read_bytes().decode("utf-8") == expected
    if UPDATE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out["screenshots"]["ghost"], SCREENSHOTS / "vscode-ghost-text.png")
        shutil.copyfile(out["screenshots"]["rewrite"], SCREENSHOTS / "vscode-rewrite-diff.png")
