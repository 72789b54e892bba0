"""``dg-lsp infill`` output when the model offers nothing: stdout stays empty, stderr says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dg_lsp.infill
from dg_lsp import cli


def test_no_completion_leaves_stdout_empty_and_explains_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "app.py"
    source.write_text("def add(a, b):\n    return a + b\n", encoding="utf-8")
    calls: list[int] = []

    def no_answer(engine: Any, text: str, tree: Any, language: str, offset: int, *args: Any, **kwargs: Any) -> None:
        calls.append(offset)

    monkeypatch.setattr(cli, "_engine", lambda args: object())
    monkeypatch.setattr(dg_lsp.infill, "complete", no_answer)
    assert cli.main(["infill", str(source), "--line", "2", "--col", "5"]) == 0
    out, err = capsys.readouterr()
    assert calls == [len("def add(a, b):\n") + 4]
    assert out == ""
    assert "no completion here" in err
    assert "--no-parse-check" in err


def test_json_output_reports_an_empty_answer_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "app.py"
    source.write_text("x = 1\n", encoding="utf-8")
    monkeypatch.setattr(cli, "_engine", lambda args: object())
    monkeypatch.setattr(dg_lsp.infill, "complete", lambda *args, **kwargs: None)
    assert cli.main(["infill", str(source), "--line", "1", "--col", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == '{"text": "", "raw": null}'
    assert "no completion here" not in err
