"""Smoke test of the GPU check (benchmarks/gpu_diffusiongemma_check.py) at tiny geometry on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_diffusiongemma_check as check  # noqa: E402
from dg_lsp.model.weights import INDEX_FILE, weight_files  # noqa: E402


def test_the_check_writes_the_published_layout_loads_it_and_times_chat_infills(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    argv = ["--geometry", "tiny", "--device", "cpu", "--dtype", "float32", "--quantize", "none,fp8",
            "--repeats", "1", "--kind", "line", "--steps", "2", "--shard-gb", "0.0005",
            "--work-dir", str(tmp_path / "work"), "--keep", "--json", str(report_file)]
    assert check.main(argv) == 0
    report = json.loads(report_file.read_text(encoding="utf-8"))
    written = tmp_path / "work" / "checkpoint"
    files, total_size = weight_files(written)
    assert report["shards"] == len(files) >= 2 and (written / INDEX_FILE).is_file()
    assert total_size == json.loads((written / INDEX_FILE).read_text())["metadata"]["total_size"]
    for name in check.SIDE_FILES:
        assert (written / name).is_file(), name
    assert [row["quantize"] for row in report["phases"]] == ["none", "fp8"] and report["skipped"] == []
    for row in report["phases"]:
        assert row["prompt_format"] == "chat"  # Gemma vocabulary, no FIM markers
        assert row["weights_bytes"] == row["estimate_weights_bytes"]
        for run in ("checkpoint_sampler", "16_steps"):
            assert row[run]["steps"] and all(1 <= steps <= 2 for steps in row[run]["steps"])
            assert row[run]["median_ms"] > 0
    none, fp8 = report["phases"]
    assert fp8["weights_bytes"] < none["weights_bytes"]


def test_the_budget_skips_phases_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--geometry", "tiny", "--device", "cpu", "--dtype", "float32", "--quantize", "none",
            "--budget-s", "0", "--shard-gb", "0.0005", "--work-dir", str(tmp_path / "work")]
    assert check.main(argv) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the "wrote N shards" line
    assert report["phases"] == [] and report["skipped"][0].startswith("none: budget spent")
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # cleaned up


def test_the_estimate_per_gpu_class(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(["--estimate-only"]) == 0
    rows = {row["quantize"]: row for row in json.loads(capsys.readouterr().out)["estimate"]}
    assert rows["none"]["fits"] == ["80 GB (A100, H100)", "141 GB (H200)"]
    assert rows["fp8"]["fits"][0] == "32 GB (RTX 5090)" and rows["int8"]["fits"] == rows["fp8"]["fits"]
    assert rows["fp8"]["weights_gib"] < rows["none"]["weights_gib"] / 2 + 1.5
