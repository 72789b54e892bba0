"""End-to-end: ``python -m dg_lsp`` one-shot commands on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "def add(a, b):\n    return a + b + 1\n\nprint(add(1, 2))\n"
#: A hang guard for the subprocess, not a performance limit.
GUARD_S = 300


def dg_lsp(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DG_LSP_MODEL"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "dg_lsp", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=GUARD_S,
        check=False,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def test_info_prints_json(tiny_model_dir: Path) -> None:
    proc = dg_lsp("info", "--model", tiny_model_dir, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert Path(info["modelPath"]) == tiny_model_dir.resolve()
    assert info["model"] == tiny_model_dir.name
    assert info["parameters"] > 0
    assert info["canvasLength"] == 256
    assert "python" in info["languages"]


def test_infill_json_with_logs_on_stderr_only(tiny_model_dir: Path, source: Path) -> None:
    proc = dg_lsp(
        "infill", source, "--line", "2", "--col", "12", "--model", tiny_model_dir, "--device", "cpu",
        "--steps", "2", "--no-parse-check", "--json", "--log-level", "debug",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # stdout is the JSON payload and nothing else; the logs went to stderr.
    assert len(proc.stdout.strip().splitlines()) == 1
    payload = json.loads(proc.stdout)
    assert isinstance(payload["text"], str)
    assert "raw" in payload
    if payload["raw"] is not None:
        assert isinstance(payload["raw"], str)
        assert 1 <= payload["steps"] <= 2
        assert payload["kind"] in ("rest_of_line", "line", "block")
    assert "INFO dg_lsp.model.loader: loaded" in proc.stderr
    # The file is not modified.
    assert source.read_text(encoding="utf-8") == SOURCE


def test_rewrite_prints_text(tiny_model_dir: Path, source: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "dg.log"
    proc = dg_lsp(
        "rewrite", source, "--range", "2:5-2:17", "--model", tiny_model_dir,
        "--device", "cpu", "--steps", "2", "--no-parse-check", "--log-file", log_file,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)  # plain text, not a JSON payload
    assert source.read_text(encoding="utf-8") == SOURCE
    # --log-file takes the logs: neither stdout nor stderr carries them.
    assert "dg_lsp.model.loader: loaded" in log_file.read_text(encoding="utf-8")
    assert "dg_lsp.model.loader" not in proc.stderr + proc.stdout


def test_invalid_utf8_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "latin1.py"
    path.write_bytes("def f():\n    return 'caf\u00e9'\n".encode("latin-1"))
    proc = dg_lsp(
        "infill", path, "--line", "2", "--col", "5", "--model", tiny_model_dir, "--device", "cpu", "--no-parse-check"
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert str(path) in proc.stderr
    assert "UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_position_outside_the_file_is_a_clear_error(tiny_model_dir: Path, source: Path) -> None:
    proc = dg_lsp("infill", source, "--line", "99", "--col", "1", "--model", tiny_model_dir, "--device", "cpu")
    assert proc.returncode != 0
    assert proc.stdout == ""
    # Reported as the user wrote it (1-based), with the file's size.
    assert "position 99:1 is outside the file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_model_dir_is_a_clear_error(source: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    proc = dg_lsp("infill", source, "--line", "2", "--col", "12", "--model", missing, "--device", "cpu", "--json")
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert str(missing) in proc.stderr
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
