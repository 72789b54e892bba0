"""Smoke tests of the issue-13 benchmarks (typing storm, engine soak) on the tiny model for a few seconds."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import engine_soak, typing_storm  # noqa: E402


def test_typing_mirror_matches_the_server_side_document() -> None:
    """Every storm keystroke, applied to a real DocumentTree, gives the client's mirror text."""
    from lsprotocol import types

    from dg_lsp.syntax.document_tree import DocumentTree

    doc = typing_storm.Document("file:///x.py", ["a = 1", ""], line=1, typed_from=1)
    tree = DocumentTree("\n".join(doc.lines), "python")
    rng = random.Random(0)
    for _ in range(1000):
        change = doc.next_edit(rng)
        start, end = change["range"]["start"], change["range"]["end"]
        tree.apply_change(
            types.Range(start=types.Position(**start), end=types.Position(**end)), change["text"]
        )
        assert tree.text == "\n".join(doc.lines)
    assert doc.lines[0] == "a = 1"  # typing never touches the text before the typed block


def test_stale_answers_are_detected() -> None:
    from concurrent.futures import Future

    def sent(request_id: int, version: int, order: int) -> typing_storm.Sent:
        return typing_storm.Sent(request_id, "file:///a.py", version, 0.0, order, Future())

    requests = [sent(1, 2, 1), sent(2, 3, 2)]
    non_empty = {1: {"items": [{"insertText": "x"}]}, 2: {"items": []}}
    # Request 2 (sent after the edit to version 3) answered before request 1's non-empty answer: stale.
    assert typing_storm.count_stale(requests, non_empty, {1: 5.0, 2: 4.0}, {}) == 1
    assert typing_storm.count_stale(requests, non_empty, {1: 3.0, 2: 4.0}, {}) == 0
    # The final draft says it was computed for another version: stale.
    assert typing_storm.count_stale(requests, non_empty, {1: 3.0, 2: 4.0}, {1: 1}) == 1


def test_typing_storm_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "storm.json"
    code = typing_storm.main([
        "--model", str(tiny_model_dir), "--minutes", "0.05", "--documents", "1,2", "--rate", "40",
        "--burst", "10", "--think-ms", "600", "--completion", '{"parseCheck": false}',
        "--json", str(out), "--no-progress",
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert [p["documents"] for p in report["phases"]] == [1, 2]
    for phase in report["phases"]:
        assert phase["requests"] > 20 and phase["answered"] == phase["requests"] and phase["unanswered"] == 0
        assert phase["errors"] == 0 and phase["stale"] == 0
        assert phase["rss_end_mib"] > 0 and phase["latency_ms"]["p99"] >= phase["latency_ms"]["p50"] > 0
    assert sum(p["non_empty"] for p in report["phases"]) > 0  # the stale check saw real answers
    assert report["server_status_after"] == "ready" and report["server_exit_code"] == 0
    assert Path(report["plot"]).stat().st_size > 10_000


def test_engine_soak_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    code = engine_soak.main([
        "--model", str(tiny_model_dir), "--device", "cpu", "--minutes", "0.1", "--clients", "3",
        "--disconnect-every", "3", "--sample-s", "1", "--json", str(out), "--no-progress",
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["outcomes"].get("ok", 0) > 0 and report["outcomes"].get("client gave up", 0) > 0
    assert set(report["outcomes"]) <= {"ok", "client gave up"}  # no errors, no transport failures
    assert report["health_failures"] == 0 and report["server_alive_at_end"]
    assert report["server_exit_code_after_sigterm"] == 0  # graceful shutdown
    assert len(report["rss_samples"]) >= 3 and report["rss_max_mib"] >= report["rss_start_mib"] > 0
    assert report["windows"] and Path(report["plot"]).stat().st_size > 10_000
