"""Where one denoising step's time goes: ``torch.profiler`` over a few fast-path steps, kernels ranked.

Builds the model (a checkpoint or a random-weight geometry, as ``engine_bench.py``), encodes a
prompt, warms the engine's fast path with one denoising request, then profiles one more of ``--steps`` steps
and prints the operators and kernels that took the most time (device time on CUDA, CPU time
otherwise), per step. The JSON keeps the top rows and the totals, so a short GPU session can
bring back what to work on next.

    python benchmarks/step_profile.py --geometry tiny                                   # CPU, seconds
    python benchmarks/step_profile.py --geometry 26b-a4b --device cuda --context 2048   # the GPU question
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import machine_info, utc_now, write_json  # noqa: E402


def ranked_rows(events: Any, device: bool, steps: int, rows: int) -> list[dict[str, Any]]:
    """The ``rows`` most expensive operators by self time (device or CPU), in microseconds per step."""
    def self_us(event: Any) -> float:
        value = getattr(event, "self_device_time_total", 0.0) if device else event.self_cpu_time_total
        return float(value)

    ranked = sorted(events, key=self_us, reverse=True)[:rows]
    return [
        {
            "name": event.key,
            "self_us_per_step": round(self_us(event) / steps, 1),
            "calls_per_step": round(event.count / steps, 2),
            "cpu_total_us_per_step": round(float(event.cpu_time_total) / steps, 1),
        }
        for event in ranked
        if self_us(event) > 0
    ]


def profile_steps(args: argparse.Namespace) -> dict[str, Any]:
    """Profile one ``--steps``-step fast-path request after a warm-up request; returns the report."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.engine_bench import random_ids, random_model
    from dg_lsp.engine.denoiser import CanvasSpec
    from dg_lsp.engine.fast_path import FastDenoiser, FastPathSettings
    from dg_lsp.engine.prompt_cache import PromptCache
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import load_model, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    built = time.perf_counter()
    if args.model:
        loaded = load_model(Path(args.model), args.device, args.dtype)
        vocab = int(loaded.tokenizer.get_vocab_size())
        prompt = [(7 + 13 * i) % vocab for i in range(args.context)]
    else:
        subject = random_model(args.geometry, device, resolve_dtype(args.dtype, device), seed=0)
        loaded = subject.loaded
        prompt = random_ids(subject, args.context, 0)[0].tolist()
    build_s = time.perf_counter() - built
    model = loaded.model
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    canvas = min(args.canvas, int(model.config.canvas_length or args.canvas))
    fast = FastDenoiser(model, FastPathSettings(compile=args.compile))
    settings = SamplerSettings(max_steps=args.steps, confidence_threshold=-1.0)  # every step runs

    cache = PromptCache(model, reuse=False)
    cache.encode(prompt)  # outside the profile: only the denoising steps are ranked

    def request() -> int:
        return int(fast.denoise(cache, CanvasSpec(length=canvas), settings, seed=0).steps)

    warm_started = time.perf_counter()
    request()
    warm_s = time.perf_counter() - warm_started
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        steps = request()
        if on_cuda:
            torch.cuda.synchronize()
        request_ms = (time.perf_counter() - started) * 1000.0
    events = prof.key_averages()
    rows = ranked_rows(events, on_cuda, steps, args.rows)
    total_key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    total_us = sum(float(getattr(event, total_key, 0.0)) for event in events)
    return {
        "date": utc_now(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(str(device), torch.get_num_threads()),
        "model": args.model or f"random {args.geometry}",
        "parameters": loaded.parameters,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "compile": args.compile,
        "attention": str(model.config._attn_implementation),
        "experts": str(getattr(model.config, "_experts_implementation", None)),
        "canvas": canvas,
        "context": len(prompt),
        "steps": steps,
        "build_s": round(build_s, 1),
        "warm_request_s": round(warm_s, 2),
        "profiled_request_ms": round(request_ms, 1),
        "time_kind": "device" if on_cuda else "cpu",
        "self_us_per_step_total": round(total_us / max(1, steps), 1),
        "top": rows,
    }


def print_report(report: dict[str, Any]) -> None:
    """The ranked table, per step."""
    print(
        f"{report['model']} ({report['parameters'] / 1e6:,.1f}M, {report['dtype']}, compile {report['compile']}, "
        f"attention {report['attention']}, experts {report['experts']}): canvas {report['canvas']}, context "
        f"{report['context']}, {report['steps']} steps profiled in {report['profiled_request_ms']} ms; "
        f"{report['time_kind']} self time {report['self_us_per_step_total'] / 1000:.2f} ms per step"
    )
    print(f"{'self us/step':>13} {'calls/step':>10}  operator")
    for row in report["top"]:
        print(f"{row['self_us_per_step']:>13,.1f} {row['calls_per_step']:>10}  {row['name'][:100]}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--geometry", default="tiny", help="random-weight model of this geometry (engine_bench's)")
    source.add_argument("--model", default=None, help="checkpoint directory instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", default="off", choices=["auto", "on", "off", "graphs"])
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--context", type=int, default=512, help="prompt tokens")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps in the profiled request")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = profile_steps(args)
    print_report(report)
    if args.json is not None:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
