"""Start-up cost of the engine's compiled fast path: load, then the server's warm-up requests.

With ``--compile auto`` on a CPU (the server's default) the warm-up runs uncompiled and the
step is then compiled in the background, as the server does: ``background_compile_s`` is the
time until the compiled step is swapped in (``--no-background`` skips it).

Run it twice: the first run compiles (and fills the on-disk inductor cache,
``$TORCHINDUCTOR_CACHE_DIR``, by default under ``~/.cache/dg-lsp``); the second shows the warm
start a user sees from then on. Prints one JSON line (and appends it to ``--json`` when given).

    python benchmarks/fast_path_warmstart.py --dtype bfloat16                  # embedded model, CPU
    python benchmarks/fast_path_warmstart.py --geometry 26b-a4b --device cuda  # random 26B-A4B weights
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import machine_info, utc_now  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model, or --geometry)")
    parser.add_argument("--geometry", default=None, help="random-weight model of this geometry instead (engine_bench's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", default="on", choices=["auto", "on", "off", "graphs"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--context", type=int, default=0, help="also warm a prompt of this many tokens (e.g. 2048)")
    parser.add_argument("--json", type=Path, default=None, help="append the result line to this file")
    parser.add_argument("--no-background", action="store_true", help="with --compile auto on CPU: do not compile in the background")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    from dg_lsp.canvas import HoleKind
    from dg_lsp.engine.engine import Engine, InfillRequest, warmup_requests
    from dg_lsp.engine.fast_path import FastPathSettings
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, load_model

    if args.geometry:
        from benchmarks.engine_bench import random_model
        from dg_lsp.model.loader import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        loaded = random_model(args.geometry, device, resolve_dtype(args.dtype, device), seed=0).loaded
    else:
        loaded = load_model(Path(args.model) if args.model else EMBEDDED_MODEL_DIR, args.device, args.dtype)
    engine = Engine(loaded, fast_path=FastPathSettings(compile=args.compile))
    loaded_s = time.perf_counter() - started
    requests = warmup_requests()
    if args.context:  # a long prompt: its context bucket is warmed too
        filler = "x = 1\n" * (args.context // 3)
        requests.append(
            InfillRequest(prefix=filler, suffix="\n", language="python", kind=HoleKind.LINE,
                          settings=SamplerSettings(max_steps=2), max_context_tokens=args.context)
        )
    per_request = []
    warm_started, warm_cpu = time.perf_counter(), time.process_time()
    for request in requests:
        t = time.perf_counter()
        engine.infill(request)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        per_request.append(round(time.perf_counter() - t, 2))
    warmup_s, warmup_cpu_s = time.perf_counter() - warm_started, time.process_time() - warm_cpu
    job = None if args.no_background else engine.background_compile()
    background_s: float | None = None
    if job is not None:  # what the server starts once it is ready
        job.start()
        job.wait()
        background_s = job.seconds
    report = {
        "benchmark": "fast_path_warmstart",
        "date": utc_now(),
        "command": " ".join(["python", "benchmarks/fast_path_warmstart.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": str(loaded.path),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "compiled": engine.fast is not None and engine.fast.compiled,
        "load_s": round(loaded_s, 2),
        "warmup_s": round(warmup_s, 2),
        # CPU seconds: what the work costs, whatever else shares the machine
        "warmup_cpu_s": round(warmup_cpu_s, 2),
        "compile": engine.compile_facts(),
        "background_compile_s": round(background_s, 2) if background_s is not None else None,
        "load_cpu_s": round(warm_cpu - cpu_started, 2),
        "compile_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "warmup_requests_s": per_request,
        "machine": machine_info(device=str(loaded.device)),
    }
    line = json.dumps(report)
    print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
