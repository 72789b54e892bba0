"""Smoke tests of the benchmarks: each one's core on the tiny model with minimal sizes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common, cpu_compile_variants, encoder_greedy, engine_bench, lsp_latency, train_step, typing_cost  # noqa: E402


def test_percentile_matches_linear_interpolation() -> None:
    assert common.percentile([3.0], 95) == 3.0
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert common.percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert math.isclose(common.percentile(list(map(float, range(1, 101))), 95), 95.05)
    assert math.isnan(common.percentile([], 50))
    stats = common.summarize([10.0, 20.0, 30.0])
    assert stats["count"] == 3 and stats["p50"] == 20.0 and stats["mean"] == 20.0


def test_offsets_and_end_position() -> None:
    text = "ab\n\U0001f600x\n"
    assert common.offset_at(text, 0, 1) == 1
    assert common.offset_at(text, 1, 2) == 4  # the emoji is two UTF-16 units
    assert common.end_position(text) == (2, 0)
    assert common.end_position("a\nxyz") == (1, 3)


def test_cases_remove_the_expected_middle() -> None:
    cursors = common.load_cursors()
    cases = lsp_latency.inline_cases(["python/shapes.py"], ["REST_OF_LINE"], None)
    assert [c.kind for c in cases] == ["REST_OF_LINE"] * len(cases) and cases
    full = (common.FIXTURES_DIR / "python/shapes.py").read_text(encoding="utf-8")
    for case in cases:
        expected = cursors["python/shapes.py"][case.index]["expected"]
        assert len(case.text) == len(full) - len(expected)
        start = common.offset_at(full, case.line, case.character)
        assert case.text == full[:start] + full[start + len(expected) :]
    ranges = lsp_latency.rewrite_ranges(full, 3)
    assert [lines for _, lines in ranges] == [1, 2, 3]
    for range_, _ in ranges:
        assert (range_["end"]["line"], range_["end"]["character"]) > (range_["start"]["line"], 0)


@pytest.mark.timeout(300)
def test_lsp_latency_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "lsp.json", tmp_path / "lsp.png"
    code = lsp_latency.main(
        [
            "--model", str(tiny_model_dir),
            "--languages", "python",
            "--kinds", "REST_OF_LINE,BLOCK",
            "--max-cursors", "1",
            "--reps", "2",
            "--rewrite-ranges", "1",
            "--rewrite-reps", "1",
            "--completion", json.dumps({"maxSteps": 2, "parseCheck": False}),
            "--json", str(out),
            "--plot", str(png),
            "--no-progress",
        ]
    )
    assert code == 0 and png.stat().st_size > 0
    report = json.loads(out.read_text())
    summary = report["summary_ms"]
    assert summary["inline (all kinds)"]["count"] == 4  # 2 cursors x 2 reps
    assert summary["inline single-line (REST_OF_LINE+LINE)"]["count"] == 2
    assert summary["rewrite (all ranges)"]["count"] == 1
    assert all(s["ms"] > 0 for s in report["samples"])
    assert report["server"]["modelPath"] == str(tiny_model_dir)
    assert report["server_counters"]["cacheHits"] == 0  # the edits kept the completion cache out
    assert report["server_counters"]["jobs"]["completed"] >= 5
    assert report["target"]["single_line_p50_ms"] is not None
    assert "### Editor latency over LSP" in lsp_latency.markdown_block(report)


def typed_latency(model: Path, tmp_path: Path, completion: dict[str, object], *extra: str) -> dict[str, Any]:
    """``lsp_latency --typed-ms 300`` on one rest-of-line and one line cursor, twice each; its JSON report."""
    out = tmp_path / "typed.json"
    code = lsp_latency.main(
        [
            "--model", str(model),
            "--languages", "python",
            "--kinds", "REST_OF_LINE,LINE",
            "--max-cursors", "1",
            "--reps", "2",
            "--typed-ms", "300",
            *extra,
            "--rewrite-reps", "0",
            "--completion", json.dumps({"maxSteps": 2, "parseCheck": False, **completion}),
            "--json", str(out),
            "--no-plot",
            "--no-progress",
        ]
    )
    assert code == 0
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("prefetch", [True, False])
def test_lsp_latency_after_a_keystroke_with_and_without_prefetch(tiny_model_dir: Path, tmp_path: Path, prefetch: bool) -> None:
    report = typed_latency(tiny_model_dir, tmp_path, {"prefetch": prefetch})
    assert report["settings"]["typed_ms"] == 300
    assert [(s["kind"], s["rep"]) for s in report["samples"]] == [("REST_OF_LINE", 0), ("LINE", 0), ("REST_OF_LINE", 1), ("LINE", 1)]
    counters = report["server_counters"]
    assert counters["cacheHits"] == 0 and counters["jobs"]["completed"] >= 4
    # One keystroke per timed request (plus the warm-up's): with prefetch each is encoded before its request.
    if prefetch:
        assert counters["prefetch"]["encoded"] >= 4, counters["prefetch"]
        assert counters["promptCache"]["last"]["encodedTokens"] == 0
    else:
        assert counters["prefetch"]["scheduled"] == 0
        assert counters["promptCache"]["last"]["encodedTokens"] > 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("option", ["prefetch", "speculate"])
def test_lsp_latency_typed_ab_alternates_an_option_in_one_server(tiny_model_dir: Path, tmp_path: Path, option: str) -> None:
    report = typed_latency(tiny_model_dir, tmp_path, {}, "--typed-ab", "--ab-option", option)
    on, off = f"{option} on", f"{option} off"
    # Alternating per request: each cursor once with the option and once without.
    assert [(s["kind"], s["variant"]) for s in report["samples"]] == [
        ("REST_OF_LINE", on), ("LINE", off), ("REST_OF_LINE", off), ("LINE", on)
    ]
    counters = report["server_counters"]
    assert counters["prefetch"]["encoded"] >= 2
    if option == "speculate":  # the two requests with speculation were answered from it
        assert counters["cacheHits"] >= 2
    ab = report["ab"]
    assert set(ab["summary_ms"]) == {on, off}
    assert ab["summary_ms"][on]["inline single-line (REST_OF_LINE+LINE)"]["count"] == 2
    assert ab["paired_ratio_on_over_off"]["single-line"]["count"] == 2
    assert f"| {on} |" in lsp_latency.markdown_block(report)
    assert f"`completion.{option}` alternated on / off" in lsp_latency.markdown_block(report)
    png = lsp_latency.plot_report(report, tmp_path / "ab.png", 120.0)  # one curve per variant and kind
    assert png.stat().st_size > 0
    with pytest.raises(SystemExit):
        lsp_latency.main(["--typed-ab", "--no-progress"])


@pytest.mark.timeout(300)
def test_engine_bench_smoke(tmp_path: Path) -> None:
    out, png = tmp_path / "engine.json", tmp_path / "engine.png"
    code = engine_bench.main(
        [
            "--geometry", "tiny",
            "--device", "cpu",
            "--steps", "3",
            "--canvas", "16",
            "--context", "32",
            "--contexts", "32,64,100000",
            "--reps", "1",
            "--typing-tokens", "96",
            "--keystrokes", "2",
            "--json", str(out),
            "--plot", str(png),
            "--quiet",
            "--no-compile",  # compiling takes minutes on a small CPU; test_fast_path checks the compiled step
        ]
    )
    assert code == 0 and png.stat().st_size > 0
    report = json.loads(out.read_text())
    paths = report["paths"]
    assert "skipped" in paths["fast_compiled"]
    assert report["headline"]["fast_greedy_over_stock_dynamic_per_step"] > 0
    for key in ("stock_dynamic", "engine_sampled", "engine_greedy", "fast_sampled", "fast_greedy"):
        assert paths[key]["steps_run"] == 3
        assert paths[key]["canvas_ms"] > 0 and paths[key]["tokens_per_s"] > 0
    assert "skipped" in paths["stock_static"]  # CUDA only
    assert report["settings"]["canvas"] == 16
    assert report["headline"]["engine_greedy_over_stock_dynamic_per_step"] is not None
    assert report["prefill_ms"]["32"]["stock"] > 0 and report["prefill_ms"]["32"]["engine"] > 0
    assert "skipped" in report["prefill_ms"]["100000"]  # beyond the tiny geometry's positions
    typing = report["typing"]
    assert typing["keystrokes"] == 2 and typing["file_tokens"] <= 96
    assert typing["reuse"]["reused_tokens_mean"] > 0 and typing["no_reuse"]["reused_tokens_mean"] == 0
    assert typing["reuse"]["encoded_tokens_mean"] < typing["no_reuse"]["encoded_tokens_mean"]
    assert "### Engine vs stock" in engine_bench.markdown_block(report)
    assert paths["fast_graphs"] == {"skipped": "CUDA only"}


def test_engine_bench_skips_paths_measured_before(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    code = engine_bench.main(
        ["--geometry", "tiny", "--device", "cpu", "--steps", "2", "--canvas", "16", "--context", "32", "--contexts", "32",
         "--reps", "1", "--keystrokes", "0", "--json", str(out), "--no-plot", "--quiet", "--no-compile",
         "--skip", "engine_sampled,engine_greedy,fast_sampled"]
    )
    assert code == 0
    paths = json.loads(out.read_text())["paths"]
    assert all(paths[key] == {"skipped": "--skip"} for key in ("engine_sampled", "engine_greedy", "fast_sampled"))
    assert paths["stock_dynamic"]["steps_run"] == paths["fast_greedy"]["steps_run"] == 2


def test_interleaved_line_names_each_faster_path() -> None:
    line = engine_bench.interleaved_line({
        "rounds": 3,
        "ms_per_step_median": {"stock_dynamic": 130.0, "fast_greedy": 110.0, "fast_graphs": 40.0, "fast_compiled": 26.0},
        "paired_ratio_to_first": {"stock_dynamic": 1.0, "fast_greedy": 0.85, "fast_graphs": 0.31, "fast_compiled": 0.2},
    })
    assert "CUDA graphs / stock paired 0.310 (3.23x)" in line and "compiled / stock paired 0.200 (5.00x)" in line
    assert "fast path / stock 0.850" in line


def test_random_model_ties_encoder_and_decoder() -> None:
    import torch

    subject = engine_bench.random_model("tiny", torch.device("cpu"), torch.float32, seed=0)
    model = subject.model
    encoder_layer = model.model.encoder.language_model.layers[0]
    decoder_layer = model.model.decoder.layers[0]
    assert encoder_layer.self_attn.q_proj.weight is decoder_layer.self_attn.q_proj.weight
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert os.environ.get("DG_LSP_TEST_MODEL")  # conftest built the tiny checkpoint


def test_engine_server_bench_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks import engine_server

    out, png = tmp_path / "server.json", tmp_path / "server.png"
    code = engine_server.main(
        ["--model", str(tiny_model_dir), "--device", "cpu", "--users", "1,3", "--requests", "6",
         "--steps", "40", "--threads", "1", "--json", str(out), "--plot", str(png), "--no-progress"]
    )
    assert code == 0 and png.stat().st_size > 0
    report = json.loads(out.read_text())
    runs = {(r["mode"], r["users"]): r for r in report["runs"]}
    assert set(runs) == {("batched", 1), ("batched", 3), ("unbatched", 1), ("unbatched", 3)}
    assert all(r["requests"] == 6 and len(r["latencies_ms"]) == 6 for r in runs.values())
    assert runs[("unbatched", 3)]["canvases_per_forward"] == 1.0
    assert runs[("batched", 3)]["canvases_per_forward"] > 1.0  # three users really shared steps
    assert report["answers_identical"] is True
    assert all(r["forward_ms"] > 0 for r in runs.values())
    assert "### Engine server, batched vs unbatched" in engine_server.markdown_block(report)


def test_batched_cache_bench_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks import batched_cache

    out = tmp_path / "batched_cache.json"
    code = batched_cache.main(
        ["--model", str(tiny_model_dir), "--users", "1,3", "--requests", "6", "--steps", "6", "--context", "64",
         "--reps", "2", "--changes", "1,3", "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    runs = {(r["mode"], r["users"]): r for r in report["runs"]}
    assert set(runs) == {("static", 1), ("static", 3), ("restack", 1), ("restack", 3)}
    assert report["same_answers"] is True
    assert runs[("static", 3)]["layout_mib"] == 0 and runs[("static", 3)]["joins"] == 6
    assert runs[("restack", 3)]["layout_mib"] > 0 and runs[("restack", 3)]["joins"] == 0
    change = {c["batch"]: c for c in report["membership_change"]}
    assert change[3]["restack_mib"] > change[3]["static_mib"] > 0


def test_cpu_compile_variants_interleave_warm_workers(tmp_path: Path) -> None:
    out = tmp_path / "variants.json"
    code = cpu_compile_variants.main(
        [
            "--compile", "off",  # compiling takes minutes here; the harness is what this checks
            "--variants", "stock inductor", "eager experts",
            "--reps", "3",
            "--gap", "0",
            "--json", str(out),
        ]
    )
    assert code == 0 and out.with_suffix(".png").stat().st_size > 0
    report = json.loads(out.read_text())
    assert report["compile"] == "off" and report["reps"] == 3
    assert list(report["samples_ms"]) == ["stock inductor", "eager experts"]
    for variant, samples in report["samples_ms"].items():
        assert len(samples) == 3 and all(ms > 0 for ms in samples)
        assert report["summary_ms"][variant]["start_s"] > 0
    assert report["summary_ms"]["stock inductor"]["paired_ratio_p50"] == 1.0
    assert report["summary_ms"]["eager experts"]["paired_ratio_p50"] > 0


def test_dense_experts_match_the_grouped_forward() -> None:
    """The ``dense experts`` variant computes what transformers' grouped experts forward computes."""
    import torch
    from transformers.integrations.moe import grouped_mm_experts_forward

    from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, load_model

    model = load_model(EMBEDDED_MODEL_DIR, "cpu", "float32").model
    experts = next(module for name, module in model.named_modules() if name.endswith(".experts"))
    generator = torch.Generator().manual_seed(0)
    for rows in (1, 7, 32):
        hidden = torch.randn(rows, experts.gate_up_proj.shape[-1], generator=generator)
        routing = torch.randn(rows, experts.num_experts, generator=generator).softmax(dim=-1)
        weights, index = routing.topk(1, dim=-1)
        with torch.inference_mode():
            grouped = grouped_mm_experts_forward(experts, hidden, index, weights)
            dense = cpu_compile_variants.dense_experts_forward(experts, hidden, index, weights)
        assert dense.shape == grouped.shape == hidden.shape
        torch.testing.assert_close(dense, grouped, rtol=1e-5, atol=1e-5)
        assert grouped.abs().max() > 1e-3  # a real comparison, not of two zero tensors


def test_train_step_times_each_canvas_length_of_both_objectives(tmp_path: Path) -> None:
    for objective in ("infill", "lm"):
        out = tmp_path / f"{objective}.json"
        argv = ["--objective", objective, "--canvases", "32,64", "--warmup", "0", "--steps", "1", "--batch-size", "2",
                "--context-tokens", "64", "--no-progress", "--json", str(out)]
        assert train_step.main(argv) == 0
        report = json.loads(out.read_text())
        assert [row["canvas"] for row in report["rows"]] == [32, 64]
        assert all(row["step_s"]["count"] == 1 and row["tokens_per_s"] > 0 for row in report["rows"])
        assert report["graph_breaks"] == 0 and report["args"]["objective"] == objective
    infill, lm = (json.loads((tmp_path / f"{o}.json").read_text())["rows"] for o in ("infill", "lm"))
    assert all(a["tokens_per_step"] > b["tokens_per_step"] for a, b in zip(infill, lm))  # lm: prompt tokens only


def test_encoder_greedy_decodes_with_its_cache_what_full_forwards_give(tiny_model_dir: Path) -> None:
    import torch

    from dg_lsp.engine.engine import Engine
    from dg_lsp.model.loader import load_model

    engine = Engine(load_model(tiny_model_dir, "cpu", "float32"))
    prompt = engine.loaded.tokenizer.encode("def add(a, b):\n    return", add_special_tokens=False).ids
    line = encoder_greedy.greedy_line(engine, prompt, max_new=6)
    # The same tokens, one full forward per token without a cache.
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(6):
            hidden = engine.loaded.model.model.encoder(input_ids=torch.tensor([ids])).last_hidden_state
            token = int(encoder_greedy.next_token_logits(engine, hidden).argmax(-1))
            if token in engine.markers.stop_ids:
                break
            ids.append(token)
            if "\n" in engine.loaded.tokenizer.decode(ids[len(prompt) :], skip_special_tokens=False):
                break
    expected = engine.loaded.tokenizer.decode(ids[len(prompt) :], skip_special_tokens=False).split("\n", 1)[0]
    assert line == expected


@pytest.mark.timeout(300)
def test_encoder_greedy_scores_both_modes(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "greedy.json"
    code = encoder_greedy.main(["--model", str(tiny_model_dir), "--limit", "3", "--both", "--max-new", "8", "--json", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert [run["mode"] for run in report["runs"]] == ["suffix", "hidden"]
    assert all(run["summary"]["tasks"] == 3 for run in report["runs"])
    rows = report["rows"]
    assert len(rows) == 6 and all("\n" not in row["completion"] for row in rows)
    assert all(row["outcome"] in {"passed", "failed", "timeout"} for row in rows)
    assert all(row["latency_ms"] > 0 for row in rows)


def test_process_cpu_seconds_counts_this_process_s_work() -> None:
    before = typing_cost.process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert typing_cost.process_cpu_seconds(os.getpid()) - before >= 0.2


@pytest.mark.timeout(300)
def test_typing_cost_types_at_each_pace_with_the_plugin_s_timing(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "typing.json"
    code = typing_cost.main(
        [
            "--model", str(tiny_model_dir),
            "--languages", "python",
            "--max-cursors", "1",
            "--chars", "3",
            "--key-ms", "10", "450",  # faster than the change batch / slower than the request's debounce
            "--batch-ms", "100",
            "--debounce-ms", "300",
            "--completion", json.dumps({"maxSteps": 2, "parseCheck": False}),
            "--json", str(out),
            "--no-progress",
        ]
    )
    assert code == 0 and out.with_suffix(".png").stat().st_size > 0
    report = json.loads(out.read_text())
    episodes = report["episodes"]
    assert len(episodes) == 8  # 2 cursors (rest of line, line) x 2 paces x 2 reps
    # Each cursor typed once with speculation and once without at each pace.
    for pace in (10.0, 450.0):
        chosen = [(e["kind"], e["option_on"]) for e in episodes if e["key_ms"] == pace]
        assert sorted(chosen) == [("LINE", False), ("LINE", True), ("REST_OF_LINE", False), ("REST_OF_LINE", True)]
    for episode in episodes:
        assert episode["keys"] == 3 and episode["cpu_s"] >= 0 and episode["wait_ms"] > episode["request_ms"] > 0
        if episode["key_ms"] == 10.0:  # three keys in one batch, one request after the last
            assert (episode["changes_sent"], episode["requests_sent"], episode["requests_cancelled"], episode["answered_between_keys"]) == (1, 1, 0, 0)
        else:  # a change and a request after every key; the next key cancels the request unless it was answered
            assert (episode["changes_sent"], episode["requests_sent"]) == (3, 3)
            assert episode["requests_cancelled"] + episode["answered_between_keys"] == 2
    # Ghost text cleared by a key: never while keys come faster than the request's debounce; otherwise
    # shown at most from the request (300 ms after a key) to the next key (450 ms after it).
    assert all(e["ghost_cleared_ms"] == [] for e in episodes if e["key_ms"] == 10.0)
    slow = [ms for e in episodes if e["key_ms"] == 450.0 for ms in e["ghost_cleared_ms"]]
    assert slow and all(0.0 <= ms <= 150.0 + 25.0 for ms in slow)
    assert sum(row["ghost_cleared_by_key"] for row in report["rows"]) == len(slow)
    assert sum(row["keys"] for row in report["rows"]) == 24
    assert sum(e["cpu_s"] for e in episodes) > 0  # the server's work is counted (in clock ticks of 10 ms)
    assert {row["variant"] for row in report["rows"]} == {"speculate on", "speculate off"}
    assert report["paired_on_over_off"]["450.0"]["cpu_s"]["count"] == 2
    assert report["server_counters"]["prefetch"]["scheduled"] >= 8
    assert report["server_counters"]["jobs"]["failed"] == 0


@pytest.mark.timeout(300)
def test_typing_cost_can_alternate_the_client_s_timing_instead(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "timing.json"
    code = typing_cost.main(
        [
            "--model", str(tiny_model_dir),
            "--languages", "python",
            "--max-cursors", "1",
            "--chars", "3",
            "--key-ms", "40",
            "--batch-ms", "200",  # all three keys in one change ...
            "--debounce-ms", "300",
            "--alt-timing", "0", "300",  # ... against one change per key
            "--completion", json.dumps({"maxSteps": 2, "parseCheck": False, "speculate": True}),
            "--json", str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["option"] is None and report["settings"]["alt_timing"] == [0.0, 300.0]
    changes = {(e["kind"], e["option_on"]): e["changes_sent"] for e in report["episodes"]}
    assert changes == {("REST_OF_LINE", True): 3, ("LINE", True): 3, ("REST_OF_LINE", False): 1, ("LINE", False): 1}
    assert {row["variant"] for row in report["rows"]} == {"changes 0 / request 300 ms", "changes 200 / request 300 ms"}
