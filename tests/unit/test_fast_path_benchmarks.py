"""Smoke tests of the fast-path benchmarks on the tiny model with minimal sizes (no timing limits)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import fast_path_requests, fast_path_warmstart, lsp_latency, step_profile  # noqa: E402


def test_fast_path_requests_smoke(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "requests.json", tmp_path / "requests.png"
    code = fast_path_requests.main(
        [
            "--model", str(tiny_model_dir),
            "--configs", "eager,fast",
            "--threads", "1",
            "--reps", "1",
            "--max-cursors", "1",
            "--max-steps", "2",
            "--json", str(out),
            "--plot", str(png),
        ]
    )
    assert code == 0 and png.stat().st_size > 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"eager", "fast"}
    assert report["same_text_as_first_config"]["fast"] == 1.0  # float32 fast path = eager path
    kinds = {sample["kind"] for sample in report["samples"]}
    assert kinds <= {"REST_OF_LINE", "LINE", "BLOCK"} and kinds
    assert all(sample["ms"] > 0 for sample in report["samples"])
    assert "| config | kind |" in capsys.readouterr().out


def test_fast_path_warmstart_smoke(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "warm.jsonl"
    # compile auto: uncompiled warm-up; the suite turns the background compile off (conftest), so none runs
    code = fast_path_warmstart.main(
        ["--model", str(tiny_model_dir), "--compile", "auto", "--threads", "1", "--dtype", "float32", "--json", str(out)]
    )
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == json.loads(out.read_text().splitlines()[-1])
    assert line["benchmark"] == "fast_path_warmstart" and line["dtype"] == "float32" and not line["compiled"]
    assert len(line["warmup_requests_s"]) == 3 and line["warmup_s"] >= 0
    assert line["compile"]["state"] == "off" and line["background_compile_s"] is None


def test_lsp_latency_waits_for_the_compiled_step() -> None:
    class Client:
        def __init__(self, states: list[str]) -> None:
            self.states = states

        def request(self, method: str, params: object, timeout: float) -> object:
            return {"status": "ready", "compile": {"state": self.states.pop(0)}}

    info, waited = lsp_latency.wait_for_compile(Client(["compiling", "compiling", "ready"]), timeout=60)  # type: ignore[arg-type]
    assert info["compile"]["state"] == "ready" and waited >= 0
    info, _ = lsp_latency.wait_for_compile(Client(["off"]), timeout=60)  # type: ignore[arg-type]
    assert info["compile"]["state"] == "off"
    with pytest.raises(lsp_latency.LspError):
        lsp_latency.wait_for_compile(Client(["compiling"] * 10), timeout=0)  # type: ignore[arg-type]


def test_step_profile_ranks_the_denoising_steps_operators(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    code = step_profile.main(
        ["--model", str(tiny_model_dir), "--threads", "1", "--canvas", "32", "--context", "40", "--steps", "3", "--rows", "5",
         "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["steps"] == 3 and report["canvas"] == 32 and report["context"] == 40 and report["time_kind"] == "cpu"
    top = report["top"]
    assert 0 < len(top) <= 5 and [row["self_us_per_step"] for row in top] == sorted((row["self_us_per_step"] for row in top), reverse=True)
    assert any(row["name"].startswith("aten::") for row in top)  # the model's own operators, not only the profiler's
    assert sum(row["self_us_per_step"] for row in top) <= report["self_us_per_step_total"] + 1e-6
    assert "self us/step" in capsys.readouterr().out
