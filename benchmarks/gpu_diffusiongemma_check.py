"""GPU check: DiffusionGemma 26B-A4B in the published format, loaded and driven by dg-lsp's own code.

1. Writes the published layout with random weights generated on the device: the 26B-A4B text
   geometry (``dg_lsp.model.geometry``) as bfloat16 safetensors shards with
   ``model.safetensors.index.json``, a Gemma-vocabulary tokenizer without FIM markers, the chat
   template and the published ``generation_config.json`` (from ``dg_lsp.testing_published``).
2. For each ``--quantize`` mode: loads it with ``dg_lsp.model.loader.load_model`` (memory check,
   sharded load straight onto the device, vision tower dropped, quantization while reading),
   and reports load time, memory (allocated, peak, weights, and the loader's estimate), then
   chat-format infill latency through ``dg_lsp.engine.Engine`` (the format it picks for this
   checkpoint) with the checkpoint's sampler and with a fixed 16-step budget. The engine's fast
   path runs uncompiled by default (``--compile off``): compiling the 26B step takes minutes.

Budget: built for one H100/H200 within 8 minutes (phases are skipped, and say so, when
``--budget-s`` runs out). ``--geometry tiny --device cpu`` runs the same code in seconds
(the smoke test does). ``--estimate-only`` prints the memory estimate per GPU class (no GPU).

    python benchmarks/gpu_diffusiongemma_check.py --json $OUT/gpu_check.json
    python benchmarks/gpu_diffusiongemma_check.py --geometry tiny --device cpu
    python benchmarks/gpu_diffusiongemma_check.py --estimate-only
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import replace
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dg_lsp.canvas import HoleKind  # noqa: E402
from dg_lsp.engine.engine import Engine, InfillRequest  # noqa: E402
from dg_lsp.engine.fast_path import FastPathSettings  # noqa: E402
from dg_lsp.engine.sampler import SamplerSettings  # noqa: E402
from dg_lsp.model.geometry import GEOMETRIES, Geometry  # noqa: E402
from dg_lsp.model.loader import load_model  # noqa: E402
from dg_lsp.model.memory import GIB, estimate, load_config  # noqa: E402
from dg_lsp.model.quantize import QUANTIZE_MODES, storage_bytes  # noqa: E402
from dg_lsp.model.weights import INDEX_FILE  # noqa: E402
from dg_lsp.testing_published import GEMMA_SPECIAL_TOKENS, build_published_checkpoint  # noqa: E402

#: Files of the published layout besides config.json and the weights.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja")
#: GPU classes (name, memory in GiB as the device reports it) for ``--estimate-only``.
GPU_CLASSES = (("24 GB (RTX 4090)", 23.6), ("32 GB (RTX 5090)", 31.4), ("48 GB (L40S, A6000)", 44.4),
               ("80 GB (A100, H100)", 79.1), ("141 GB (H200)", 139.7))

PREFIX = '''import statistics


def describe(values: list[float]) -> dict[str, float]:
    """Summary statistics of a sample."""
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "median": '''
SUFFIX = ''',
        "max": ordered[-1],
    }
'''


def write_published(out: Path, geometry: Geometry, device: torch.device, shard_bytes: int, seed: int) -> float:
    """Write ``geometry`` in the published layout into ``out`` with random weights made on ``device``; seconds taken."""
    from safetensors.torch import save_file
    from transformers import DiffusionGemmaForBlockDiffusion

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:  # side files from the tiny published checkpoint
        small = build_published_checkpoint(Path(scratch) / "tiny", seed=seed)
        for name in SIDE_FILES:
            shutil.copy(small / name, out / name)
    config = geometry.to_config(pad_id=0, eos_id=[1, 106], bos_id=2)
    config.save_pretrained(str(out))
    with torch.device("meta"):
        skeleton = DiffusionGemmaForBlockDiffusion(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    saved = sorted(set(shapes) - set(skeleton.all_tied_weights_keys))  # tied copies are not stored
    generator = torch.Generator(device=device).manual_seed(seed)
    shard: dict[str, torch.Tensor] = {}
    shard_size = count = total = 0
    weight_map: dict[str, int] = {}

    def flush() -> None:
        nonlocal shard, shard_size, count
        save_file(shard, str(out / f"shard-{count}.tmp"), metadata={"format": "pt"})
        shard, shard_size, count = {}, 0, count + 1

    for name in saved:
        shape = shapes[name]
        if len(shape) <= 1:  # norms, router scales, layer scalars start at one
            tensor = torch.ones(shape, dtype=torch.bfloat16, device=device)
        else:
            tensor = torch.empty(shape, dtype=torch.bfloat16, device=device).normal_(0.0, 0.02, generator=generator)
        if name.endswith("embed_tokens.weight"):  # special tokens at logit 0: the model emits text
            tensor[: len(GEMMA_SPECIAL_TOKENS)] = 0.0
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_size + nbytes > shard_bytes:
            flush()
        shard[name] = tensor.cpu()
        weight_map[name] = count
        shard_size += nbytes
        total += nbytes
    flush()
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    for i, name in enumerate(names):
        (out / f"shard-{i}.tmp").rename(out / name)
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _request(settings: SamplerSettings, kind: HoleKind) -> InfillRequest:
    return InfillRequest(prefix=PREFIX, suffix=SUFFIX, language="python", kind=kind, settings=settings, seed=0,
                         file_name="stats.py")


def measure(
    path: Path,
    device: torch.device,
    dtype: str,
    quantize: str,
    repeats: int,
    kind: HoleKind,
    steps: int | None,
    compile_mode: str = "off",
) -> dict[str, Any]:
    """Load ``path`` with ``quantize`` and time chat-format infills; the numbers as a dict."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    started = time.perf_counter()
    loaded = load_model(path, str(device), dtype, quantize=quantize)
    _sync(device)
    load_s = time.perf_counter() - started
    need = estimate(load_config(path), loaded.dtype, loaded.quantize)  # type: ignore[arg-type]
    weights = sum(storage_bytes(p) for p in loaded.model.parameters())
    row: dict[str, Any] = {
        "quantize": quantize,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "load_s": round(load_s, 2),
        "weights_bytes": weights,
        "estimate_weights_bytes": need.weights,
        "weights_gib": round(weights / GIB, 3),
        "estimate_weights_gib": round(need.weights / GIB, 3),
        "estimate_total_gib": round(need.total / GIB, 3),
    }
    if device.type == "cuda":
        row["allocated_after_load_gib"] = round((torch.cuda.memory_allocated(device) - base) / GIB, 3)
        row["peak_during_load_gib"] = round((torch.cuda.max_memory_allocated(device) - base) / GIB, 3)
        torch.cuda.reset_peak_memory_stats(device)
    engine = Engine(loaded, fast_path=FastPathSettings(compile=compile_mode))
    row["prompt_format"] = engine.prompt_format
    row["compile"] = compile_mode
    runs = {"checkpoint_sampler": engine.sampler_defaults, "16_steps": SamplerSettings(max_steps=16, greedy=True)}
    for label, settings in runs.items():
        if steps is not None:
            settings = replace(settings, max_steps=steps)
        engine.infill(_request(settings, kind))  # warm-up (and the prompt cache)
        times: list[float] = []
        taken: list[int] = []
        tokens: list[int] = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            result = engine.infill(_request(settings, kind))
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000)
            taken.append(result.steps)
            tokens.append(result.middle_tokens)
        row[label] = {
            "median_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1),
            "steps": taken,
            "middle_tokens": tokens,
            "canvas_length": result.canvas_length,
            "ms_per_step": round(statistics.median(times) / max(statistics.median(taken), 1), 1),
        }
    if device.type == "cuda":
        row["peak_during_infill_gib"] = round((torch.cuda.max_memory_allocated(device) - base) / GIB, 3)
    del engine, loaded
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def estimate_table(geometry: Geometry) -> list[dict[str, Any]]:
    """Estimated memory of ``geometry`` per quantization, and which GPU classes it fits."""
    config = geometry.to_config()
    rows = []
    for quantize in QUANTIZE_MODES:
        need = estimate(config, torch.bfloat16, quantize)  # type: ignore[arg-type]
        fits = [name for name, gib in GPU_CLASSES if need.total <= gib * GIB]
        rows.append({"quantize": quantize, "weights_gib": round(need.weights / GIB, 1),
                     "total_gib": round(need.total / GIB, 1), "fits": fits})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="26b-a4b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantize", default="none,fp8", help="comma-separated modes to load and time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", choices=[k.value for k in HoleKind if k is not HoleKind.SELECTION], default="block",
                        help="hole kind of the timed infill (sets the canvas length)")
    parser.add_argument("--steps", type=int, default=None, help="cap every run's step budget (smoke tests)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                        help="the engine's torch.compile of the step (off: compiling 26B takes minutes, past the budget)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the checkpoint is written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    parser.add_argument("--shard-gb", type=float, default=4.0)
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip phases that would start after this")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--estimate-only", action="store_true", help="print the memory estimate per GPU class")
    args = parser.parse_args(argv)
    geometry = GEOMETRIES[args.geometry]
    if args.estimate_only:
        print(json.dumps({"geometry": args.geometry, "estimate": estimate_table(geometry)}, indent=2))
        return 0
    started = time.perf_counter()
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "geometry": args.geometry,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "phases": [],
        "skipped": [],
    }
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dg-gpu-check-"))
    try:
        write_s = write_published(work / "checkpoint", geometry, device, int(args.shard_gb * 1e9), seed=0)
        files = sorted(p.name for p in (work / "checkpoint").glob("*.safetensors"))
        report["write_s"] = round(write_s, 1)
        report["shards"] = len(files)
        report["checkpoint_gib"] = round(sum((work / "checkpoint" / f).stat().st_size for f in files) / GIB, 2)
        print(f"wrote {len(files)} shards ({report['checkpoint_gib']} GiB) in {write_s:.0f} s", flush=True)
        for quantize in [q.strip() for q in args.quantize.split(",") if q.strip()]:
            elapsed = time.perf_counter() - started
            if elapsed > args.budget_s:
                report["skipped"].append(f"{quantize}: budget spent ({elapsed:.0f} s > {args.budget_s:.0f} s)")
                continue
            row = measure(work / "checkpoint", device, args.dtype, quantize, args.repeats, HoleKind(args.kind),
                          args.steps, args.compile)
            report["phases"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
