"""End-to-end: the one-shot commands on the published-format checkpoint (chat format)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_cli import SOURCE, dg_lsp


def test_info_reports_the_chat_format_and_the_checkpoint_sampler(published_model_dir: Path) -> None:
    done = dg_lsp("info", "--model", published_model_dir, "--log-level", "error")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["promptFormat"] == "chat" and info["eosIds"] == [1, 50, 106]
    assert info["sampler"]["completion"]["maxSteps"] == 48 and info["sampler"]["completion"]["tMin"] == 0.4


def test_infill_and_rewrite_in_the_chat_format(published_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "app.py"
    source.write_text(SOURCE, encoding="utf-8")
    done = dg_lsp(
        "infill", source, "--line", "2", "--col", "12", "--model", published_model_dir, "--json", "--no-parse-check",
        "--steps", "4",
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert isinstance(answer["text"], str)
    if answer["raw"] is not None:
        assert answer["steps"] <= 8 and answer["kind"] == "rest_of_line"
    rewritten = dg_lsp("rewrite", source, "--range", "2:5-2:21", "--model", published_model_dir, "--steps", "2")
    assert rewritten.returncode == 0, rewritten.stderr


def test_forcing_fim_is_one_clear_error(published_model_dir: Path) -> None:
    done = dg_lsp("info", "--model", published_model_dir, "--prompt-format", "fim", "--log-level", "error")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("has no FIM markers (<fim_prefix>, <fim_suffix>, <fim_middle>); use promptFormat auto or chat")
    assert done.stderr.count("dg-lsp:") == 1
