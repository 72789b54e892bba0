"""The engine's request latency per configuration, interleaved in one process (fair on a busy machine).

Every cursor of ``fixtures/cursors.json`` (expected middle removed) becomes one ``Engine.infill``
request (prefix/suffix cut to the model's context budget, canvas and step budget as the server
chooses them, greedy, adaptive stopping on). Each request runs on every configuration in turn,
``--reps`` times, each repetition after a one-character edit at the end of the suffix (so the
prompt cache re-encodes, as in ``lsp_latency.py``). Because the configurations alternate
request by request, load from other processes falls on all of them alike. Reported per
configuration and hole kind: wall ms and CPU ms (this thread's) p50, and the first-draft ms.
No LSP, context cutting or parse check: ``lsp_latency.py`` measures those on top.

    python benchmarks/fast_path_requests.py --threads 1 --configs eager,fast,fast-bf16,compiled-bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    FIXTURES_DIR,
    RESULTS_DIR,
    command_line,
    load_cursors,
    machine_info,
    machine_line,
    markdown_table,
    median,
    offset_at,
    pyplot,
    utc_now,
    write_json,
)

#: name -> (fast path on, compile, dtype)
CONFIGS: dict[str, tuple[bool, str, str]] = {
    "eager": (False, "off", "float32"),
    "fast": (True, "off", "float32"),
    "compiled": (True, "on", "float32"),
    "eager-bf16": (False, "off", "bfloat16"),
    "fast-bf16": (True, "off", "bfloat16"),
    "compiled-bf16": (True, "on", "bfloat16"),
}
KINDS = ("REST_OF_LINE", "LINE", "BLOCK")


def requests(context_tokens: int, max_cursors: int | None) -> list[tuple[str, str, str, str]]:
    """``(kind, language, prefix, suffix)`` per fixture cursor."""
    out = []
    for key, cursors in load_cursors().items():
        text = (FIXTURES_DIR / key).read_text(encoding="utf-8")
        language = key.split("/", 1)[0]
        seen: dict[str, int] = {}
        for cursor in cursors:
            kind = cursor["kind"]
            seen[kind] = seen.get(kind, 0) + 1
            if max_cursors is not None and seen[kind] > max_cursors:
                continue
            start = offset_at(text, cursor["line"], cursor["character"])
            out.append((kind, language, text[:start], text[start + len(cursor["expected"]) :]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dg_lsp.canvas import HoleKind
    from dg_lsp.engine.engine import Engine, InfillRequest, warmup_requests
    from dg_lsp.engine.fast_path import FastPathSettings
    from dg_lsp.engine.sampler import SamplerSettings
    from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    engines: dict[str, Engine] = {}
    models: dict[str, Any] = {}
    warmup: dict[str, float] = {}
    for name in names:
        enabled, compile_mode, dtype = CONFIGS[name]
        if dtype not in models:
            models[dtype] = load_model(Path(args.model) if args.model else EMBEDDED_MODEL_DIR, "cpu", dtype)
        engine = Engine(models[dtype], fast_path=FastPathSettings(enabled=enabled, compile=compile_mode))
        started = time.perf_counter()
        for request in warmup_requests():
            engine.infill(request)
        warmup[name] = time.perf_counter() - started
        engines[name] = engine
        print(f"{name}: warm-up {warmup[name]:.1f} s", file=sys.stderr, flush=True)
    loaded = next(iter(models.values()))
    budget = min(args.context_tokens, loaded.context_tokens or args.context_tokens)
    cases = requests(budget, args.max_cursors)
    samples: list[dict[str, Any]] = []
    for index, (kind, language, prefix, suffix) in enumerate(cases):
        for rep in range(args.reps):
            edited = suffix + (" " * (rep % 2))  # a new prompt each repetition
            request = InfillRequest(
                prefix=prefix, suffix=edited, language=language, kind=HoleKind[kind],
                settings=SamplerSettings(max_steps=args.max_steps), max_context_tokens=budget,
            )
            order = names if (index + rep) % 2 == 0 else names[::-1]
            for name in order:
                first: list[float] = []
                started, cpu = time.perf_counter(), time.thread_time()

                def on_draft(text: str, step: int, total: int, final: bool, first: list[float] = first, started: float = started) -> None:
                    if not first:
                        first.append((time.perf_counter() - started) * 1000.0)

                result = engines[name].infill(request, on_draft=on_draft)
                samples.append(
                    {
                        "config": name, "kind": kind, "case": index, "rep": rep,
                        "ms": (time.perf_counter() - started) * 1000.0,
                        "cpu_ms": (time.thread_time() - cpu) * 1000.0,
                        "first_draft_ms": first[0] if first else None,
                        "encode_ms": result.encode_ms, "steps": result.steps, "canvas": result.canvas_length,
                        "prompt_tokens": result.encode.prompt_tokens, "text": result.text,
                    }
                )
        print(f"case {index + 1}/{len(cases)}", file=sys.stderr, flush=True)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        summary[name] = {}
        for kind in (*KINDS, "single-line"):
            rows = [s for s in samples if s["config"] == name and (s["kind"] == kind or (kind == "single-line" and s["kind"] != "BLOCK"))]
            if rows:
                summary[name][kind] = {
                    "n": len(rows),
                    "p50_ms": median([r["ms"] for r in rows]),
                    "p50_cpu_ms": median([r["cpu_ms"] for r in rows]),
                    "first_draft_p50_ms": median([r["first_draft_ms"] for r in rows if r["first_draft_ms"] is not None]),
                    "steps_mean": sum(r["steps"] for r in rows) / len(rows),
                }
    same = {
        name: sum(
            a["text"] == b["text"] for a, b in zip(
                [s for s in samples if s["config"] == names[0]], [s for s in samples if s["config"] == name], strict=True
            )
        ) / max(1, len(cases) * args.reps)
        for name in names
    }
    return {
        "benchmark": "fast_path_requests",
        "date": utc_now(),
        "command": command_line(__file__, args.argv),
        "machine": machine_info(device="cpu", torch_threads=torch.get_num_threads()),
        "settings": {"reps": args.reps, "context_tokens": budget, "max_steps": args.max_steps, "cases": len(cases)},
        "warmup_s": warmup,
        "summary": summary,
        "same_text_as_first_config": same,
        "samples": samples,
    }


def markdown(report: dict[str, Any]) -> str:
    """The RESULTS.md block."""
    rows = []
    for name, kinds in report["summary"].items():
        for kind, s in kinds.items():
            rows.append([name, kind, s["n"], s["p50_ms"], s["p50_cpu_ms"], s["first_draft_p50_ms"], s["steps_mean"]])
    first = next(iter(report["summary"]))
    return "\n".join(
        [
            f"Command: `{report['command']}`",
            "",
            f"Date: {report['date']}. Machine: {machine_line(report['machine'])}.",
            "",
            markdown_table(["config", "kind", "n", "p50 ms", "p50 CPU ms", "first draft p50 ms", "steps"], rows),
            "",
            "Same text as `" + first + "`: " + ", ".join(f"{k} {v:.0%}" for k, v in report["same_text_as_first_config"].items())
            + ". Warm-up (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["warmup_s"].items()) + ".",
        ]
    )


def plot(report: dict[str, Any], path: Path) -> Path:
    """p50 wall and CPU ms per kind and configuration."""
    plt = pyplot()
    names = list(report["summary"])
    kinds = ["REST_OF_LINE", "single-line", "LINE", "BLOCK"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for ax, key, title in ((axes[0], "p50_ms", "wall ms p50"), (axes[1], "p50_cpu_ms", "CPU ms p50 (this thread)")):
        for i, name in enumerate(names):
            values = [report["summary"][name].get(k, {}).get(key, float("nan")) for k in kinds]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(kinds))]
            bars = ax.bar(xs, values, width, label=name)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=6)
        ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Engine.infill per configuration, interleaved ({report['date'][:10]}, {report['machine']['cpu']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--configs", default="eager,fast,fast-bf16,compiled-bf16", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--max-cursors", type=int, default=None, help="at most this many cursors per file and kind")
    parser.add_argument("--context-tokens", type=int, default=1024, help="capped at the model's trained budget")
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "fast_path_requests.json")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "fast_path_requests.png")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    report = run(args)
    write_json(args.json, report)
    print(markdown(report))
    print(f"wrote {args.json} and {plot(report, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
