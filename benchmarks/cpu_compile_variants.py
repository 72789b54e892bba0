"""Which experts implementation and inductor options make the embedded model's step fastest on this CPU.

Each variant runs in its own process (inductor options are global and read at compile time),
with its own inductor cache directory, on the embedded model in bfloat16 with the compiled
step (``compile="on"``). Each process warms up with three requests, then times ``--reps``
single-line completions of one hole (``fixtures/python/shapes.py``, line 34; the prompt is
cached after the first request, so this is the denoising loop: 8 steps of a 32-token canvas).
All variants are started (one at a time) and kept warm, then asked for one completion each
in turn, ``--reps`` times: this machine's speed drifts by up to 2x within an hour, so only
variants measured side by side compare (the JSON keeps each variant's paired ratio to the first).

    python benchmarks/cpu_compile_variants.py --json benchmarks/results/cpu_compile_variants.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    FIXTURES_DIR,
    RESULTS_DIR,
    ROOT,
    command_line,
    load_cursors,
    machine_info,
    offset_at,
    pyplot,
    summarize,
    utc_now,
    write_json,
)
from dg_lsp.engine.compiled_step import CPU_GEMM_OPTIONS, CPU_TUNING_ENV, CPU_WRAPPER_OPTIONS  # noqa: E402

#: The experts implementation name :func:`register_dense_experts` registers with transformers.
DENSE_EXPERTS = "dg_lsp_bench_dense"

#: Variant name -> (transformers experts implementation or None for the default, inductor options set globally,
#: ``$DG_LSP_CPU_COMPILE_TUNING`` for dg-lsp's own CPU options, ``compiled_step.cpu_inductor_options``).
#: Variants with options of their own turn dg-lsp's off, so each measures exactly the options it names.
VARIANTS: dict[str, tuple[str | None, dict[str, Any], str]] = {
    "stock inductor": (None, {}, "off"),
    "batched_mm experts": ("batched_mm", {}, "off"),
    "eager experts": ("eager", {}, "off"),
    "cpp_wrapper": (None, CPU_WRAPPER_OPTIONS, "off"),
    "max_autotune + freezing": (None, CPU_GEMM_OPTIONS, "off"),
    "all three": (None, {**CPU_WRAPPER_OPTIONS, **CPU_GEMM_OPTIONS}, "off"),
    "dg-lsp default (wrapper)": (None, {}, "wrapper"),
    "dg-lsp max": (None, {}, "max"),
    # every expert on every canvas row, then the routing weight: no per-expert Python loop in the graph
    "dense experts": (DENSE_EXPERTS, CPU_WRAPPER_OPTIONS, "off"),
    # inductor's kernels split over threads only from 65536 elements a thread (default 512)
    "serial small kernels": (None, {**CPU_WRAPPER_OPTIONS, "cpp.min_chunk_size": 65536}, "off"),
}


def dense_experts_forward(
    experts: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers' experts forward computed densely: every expert on every row, weighted by its routing weight (0 if unrouted).

    The same sum as the grouped forward (``grouped_mm_experts_forward``) in another order: no sort, no
    per-expert slices, so a compiled graph needs no call back into Python (``transformers::grouped_mm_fallback``).
    """
    rows = hidden_states.shape[0]
    routing = torch.zeros(rows, experts.num_experts, dtype=top_k_weights.dtype, device=hidden_states.device)
    routing = routing.scatter_add(1, top_k_index, top_k_weights)  # (rows, experts)
    gate_up = torch.matmul(hidden_states.to(experts.gate_up_proj.dtype), experts.gate_up_proj.transpose(1, 2))
    projected = torch.bmm(experts._apply_gate(gate_up), experts.down_proj.transpose(1, 2))  # (experts, rows, hidden)
    weighted = projected * routing.t().unsqueeze(-1).to(projected.dtype)
    return weighted.sum(dim=0).to(hidden_states.dtype)


def register_dense_experts() -> None:
    """Make :data:`DENSE_EXPERTS` a transformers experts implementation (``config._experts_implementation``)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(DENSE_EXPERTS, dense_experts_forward)


HOLE_FILE = "python/shapes.py"
HOLE_LINE = 33  # 0-based: line 34
HOLE_CHARACTER = 8
#: ``--hole`` choices: the single line above (8 steps of a 32-token canvas), or the file's first block cursor of
#: ``fixtures/cursors.json`` with its expected middle removed (16 steps of a 128-token canvas).
HOLES = ("single-line", "block")


def hole_document(hole: str) -> tuple[str, int]:
    """``(document text, cursor offset)`` of a ``--hole`` choice in :data:`HOLE_FILE`."""
    source = (FIXTURES_DIR / HOLE_FILE).read_text()
    if hole == "single-line":
        lines = source.splitlines(keepends=True)
        return source, sum(len(line) for line in lines[:HOLE_LINE]) + HOLE_CHARACTER
    cursor = next(c for c in load_cursors()[HOLE_FILE] if c["kind"] == "BLOCK")
    offset = offset_at(source, cursor["line"], cursor["character"])
    assert source[offset:].startswith(cursor["expected"]), "cursors.json does not match the fixture"
    return source[:offset] + source[offset + len(cursor["expected"]):], offset


def hole_label(hole: str | None) -> str:
    """Where a ``--hole`` choice is, for reports (``None``: the single line)."""
    return f"{HOLE_FILE}:{HOLE_LINE + 1}" if hole in (None, "single-line") else f"{HOLE_FILE}, first block cursor"


def run_child(variant: str, threads: int, compile_step: str = "on", dtype: str = "bfloat16", hole: str = "single-line") -> None:
    """Serve ``variant``: warm up, print ``READY <warm-up s>``, then time one completion per ``go`` line read."""
    import torch
    import torch._inductor.config as inductor_config

    import dg_lsp.model.weights as weights
    from dg_lsp.config import CompletionOptions
    from dg_lsp.engine.engine import Engine
    from dg_lsp.engine.fast_path import FastPathSettings
    from dg_lsp.infill import complete
    from dg_lsp.languages import get_parser
    from dg_lsp.model.loader import load_model

    experts, options, tuning = VARIANTS[variant]
    os.environ[CPU_TUNING_ENV] = tuning
    if experts == DENSE_EXPERTS:
        register_dense_experts()
    if experts is not None:
        setattr(weights, "experts_implementation", lambda quantize: experts)
    for key, value in options.items():
        setattr(inductor_config, key, value)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    engine = Engine(load_model(ROOT / "dg_lsp" / "models" / "dg-code-small", "cpu", dtype),
                    fast_path=FastPathSettings(compile=compile_step))
    source, offset = hole_document(hole)
    tree = get_parser("python").parse(source.encode())
    completion = CompletionOptions()
    for _ in range(3):
        complete(engine, source, tree, "python", offset, completion)
    print(f"READY {time.perf_counter() - started:.1f}", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        began = time.perf_counter()
        complete(engine, source, tree, "python", offset, completion)
        print(f"MS {(time.perf_counter() - began) * 1000.0:.3f}", flush=True)


def _start(
    variant: str, threads: int, cache_dir: Path, compile_step: str, root: Path = ROOT, dtype: str | None = None,
    hole: str | None = None,
) -> tuple[subprocess.Popen[str], float]:
    """A warm worker process for ``variant`` and its start-up seconds (load, compile, three requests).

    ``root``: the checkout whose copy of this script (and so whose ``dg_lsp``) the worker runs;
    ``dtype``: the model's CPU dtype (``None``: the worker's default, bfloat16); ``hole``: one of
    :data:`HOLES` (``None``: the worker's default, the single line).
    """
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    script = root / "benchmarks" / Path(__file__).name
    worker = subprocess.Popen(
        [sys.executable, str(script), "--child", variant, "--threads", str(threads), "--compile", compile_step,
         *(["--dtype", dtype] if dtype else []), *(["--hole", hole] if hole else [])],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root,
    )
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.startswith("READY "):
            return worker, float(line.split()[1])
    raise RuntimeError(f"the {variant!r} worker exited before it was ready (exit code {worker.wait()})")


def _time_one(worker: subprocess.Popen[str]) -> float:
    """Ask ``worker`` for one completion and read its time (ms)."""
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write("go\n")
    worker.stdin.flush()
    for line in worker.stdout:
        if line.startswith("MS "):
            return float(line.split()[1])
    raise RuntimeError("a worker exited in the middle of the run")


def time_interleaved(workers: dict[str, subprocess.Popen[str]], reps: int, gap: float) -> dict[str, list[float]]:
    """One completion from each warm worker in turn (the order rotates every round), ``reps`` rounds; ms per worker."""
    from tqdm import tqdm

    names = list(workers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in tqdm(range(reps), desc="interleaved", unit="round"):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            time.sleep(gap)
            times[name].append(_time_one(workers[name]))
    return times


def stop_workers(workers: dict[str, subprocess.Popen[str]]) -> None:
    """Kill and reap the worker processes."""
    for worker in workers.values():
        worker.kill()
        worker.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=40, help="completions per variant, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between completions (idle OpenMP threads stop spinning)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "cpu_compile_variants.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: the JSON path with .png)")
    parser.add_argument("--compile", choices=("on", "off"), default="on",
                        help="off: the uncompiled step (the options then change nothing; for a quick check of the harness)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="the model's dtype (float32: what `dtype: auto` runs on a CPU without bfloat16 arithmetic)")
    parser.add_argument("--hole", choices=HOLES, default="single-line", help="which completion is timed")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.threads, args.compile, args.dtype, args.hole)
        return 0
    from tqdm import tqdm

    variants: list[str] = args.variants
    start_s: dict[str, float] = {}
    workers: dict[str, subprocess.Popen[str]] = {}
    with tempfile.TemporaryDirectory(prefix="dg-lsp-variants-") as tmp:
        try:
            for index, variant in enumerate(tqdm(variants, desc="compile", unit="variant")):
                workers[variant], start_s[variant] = _start(variant, args.threads, Path(tmp) / str(index), args.compile,
                                                                 dtype=args.dtype, hole=args.hole)
            times = time_interleaved(workers, args.reps, args.gap)
        finally:
            stop_workers(workers)
    base = times[variants[0]]
    summary = {
        variant: {**summarize(values), "start_s": start_s[variant],
                  "paired_ratio_p50": sorted(v / b for v, b in zip(values, base))[len(values) // 2]}
        for variant, values in times.items()
    }
    for variant, row in summary.items():
        print(f"{variant:28s} p50 {row['p50']:7.1f} ms  p95 {row['p95']:7.1f}  "
              f"paired ratio to {variants[0]!r}: {row['paired_ratio_p50']:.2f}  start {row['start_s']:.0f} s")
    payload = {
        "benchmark": "cpu_compile_variants", "date": utc_now(), "command": command_line(__file__, argv),
        "machine": machine_info("cpu", args.threads), "compile": args.compile, "dtype": args.dtype, "reps": args.reps,
        "hole": hole_label(args.hole),
        "summary_ms": summary, "samples_ms": times,
    }
    write_json(args.json, payload)
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.boxplot([times[variant] for variant in variants], showfliers=False)
        ax.set_xticks(range(1, len(variants) + 1), variants, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{args.hole} completion, ms (cached prompt)")
        ax.set_title("Embedded model, compiled step, 2 threads, variants interleaved request by request")
        fig.tight_layout()
        fig.savefig(args.plot or args.json.with_suffix(".png"), dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
