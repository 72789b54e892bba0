"""Time the trainer's step (loss, backward, AdamW) per canvas length, as the trainer runs it.

Batches come from the project's own Python sources through the trainer's example maker, one
fixed batch per canvas length (prompts padded to the trainer's fixed width, as ``--compile``
pads them). Each length gets ``--warmup`` untimed steps (compiles happen there; their time is
reported as ``first_steps_s``), then ``--steps`` timed ones. Dynamo's graph and graph-break
counts are reported: a graph break splits the step and its extra graphs count against dynamo's
recompile limit, past which steps silently run eager.

    python benchmarks/train_step.py --compile --threads 1 --json benchmarks/results/train_step.json
    PYTHONPATH=/path/to/other/checkout python benchmarks/train_step.py ...   # another revision's trainer
"""

from __future__ import annotations

import argparse
import inspect
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script; appended, so a PYTHONPATH tree (another revision) still wins
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, command_line, machine_info, summarize, utc_now, write_json  # noqa: E402


def source_files() -> list[Any]:
    """The project's Python modules as training files (what the example maker cuts holes in)."""
    from dg_lsp.train.examples import SourceFile

    paths = sorted((ROOT / "dg_lsp").rglob("*.py"))
    return [SourceFile(p.read_text(encoding="utf-8"), "python") for p in paths if p.stat().st_size > 2000]


def fixed_batches(args: argparse.Namespace, tokenizer: Any, layout: Any) -> dict[int, Any]:
    """One collated batch per requested canvas length."""
    from dg_lsp.train import trainer as T
    from dg_lsp.train.examples import ExampleMaker

    maker = ExampleMaker(tokenizer, layout, args.context_tokens, max(args.canvases), editor_line_share=0.35)
    files = source_files()
    stream = T.batches(maker.stream(files, [1.0] * len(files), random.Random(args.seed)), args.batch_size)
    config = T.TrainConfig(context_tokens=args.context_tokens)
    width = T.prompt_width(config, layout)
    found: dict[int, Any] = {}
    for group in stream:
        length = len(group[0].canvas)
        if length in args.canvases and length not in found:
            found[length] = T.collate(group, layout, 0.1, width)
        if len(found) == len(args.canvases):
            return found
    raise SystemExit("train_step: the sources gave no batch for some canvas length")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default="small")
    parser.add_argument("--objective", default="infill", choices=("infill", "lm"))
    parser.add_argument("--compile", action="store_true", help="the trainer's --compile step")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the trainer's --bf16)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--canvases", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per canvas length (compiles happen here)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per canvas length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="free text saved with the result (e.g. the revision measured)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from tokenizers import Tokenizer
    from torch._dynamo.utils import counters
    from tqdm import tqdm

    import dg_lsp
    from dg_lsp.canvas import resolve_layout_tokens
    from dg_lsp.model.checkpoint import new_model
    from dg_lsp.model.geometry import GEOMETRIES
    from dg_lsp.model.layer_order import stable_layer_type_order
    from dg_lsp.model.typing import vocab_size
    from dg_lsp.train import trainer as T

    torch.set_num_threads(args.threads)
    model_dir = ROOT / "dg_lsp" / "models" / "dg-code-small"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    batches = fixed_batches(args, tokenizer, layout)
    model = new_model(GEOMETRIES[args.geometry], tokenizer, args.seed)
    model.train()
    if args.compile:
        stable_layer_type_order(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    takes_objective = "objective" in inspect.signature(T._compiled_step).parameters  # older trees: infill only
    if args.objective != "infill" and not takes_objective:
        raise SystemExit("train_step: this tree's trainer has no --objective")
    step_fn = T._compiled_step(args.compile, args.objective) if takes_objective else T._compiled_step(args.compile)
    config = T.TrainConfig(context_tokens=args.context_tokens, **({"objective": args.objective} if takes_objective else {}))
    generator = torch.Generator().manual_seed(args.seed)
    vocab = vocab_size(model)
    tokens_of = getattr(T, "trained_tokens", lambda batch, objective: batch.tokens)

    def one_step(batch: Any) -> None:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=args.bf16):
            losses = step_fn(model, batch, vocab, config, generator)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    total = len(batches) * (args.warmup + args.steps)
    bar = tqdm(total=total, desc="train steps", unit="step", disable=args.no_progress)
    rows: list[dict[str, Any]] = []
    for length, batch in sorted(batches.items()):
        started = time.perf_counter()
        for _ in range(args.warmup):
            one_step(batch)
            bar.update(1)
        first = time.perf_counter() - started
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            one_step(batch)
            times.append(time.perf_counter() - t0)
            bar.update(1)
        stats = summarize(times)
        tokens = tokens_of(batch, args.objective)
        rows.append({
            "canvas": length, "tokens_per_step": tokens, "first_steps_s": first, "step_s": stats,
            "tokens_per_s": tokens / float(stats["p50"]),
        })
    bar.close()
    graphs = int(counters["stats"].get("unique_graphs", 0))
    breaks = int(sum(counters["graph_break"].values()))
    print(f"{'canvas':>6} {'tokens/step':>11} {'p50 s/step':>10} {'tokens/s':>9} {'first steps s':>13}")
    for row in rows:
        print(f"{row['canvas']:>6} {row['tokens_per_step']:>11} {row['step_s']['p50']:>10.3f} {row['tokens_per_s']:>9.0f} {row['first_steps_s']:>13.1f}")
    print(f"dynamo graphs {graphs}, graph breaks {breaks} (dg_lsp from {Path(dg_lsp.__file__).parent})")
    if args.json:
        write_json(args.json, {
            "benchmark": "train_step", "date": utc_now(), "command": command_line(__file__, argv or sys.argv[1:]),
            "label": args.label, "machine": machine_info("cpu", args.threads), "args": vars(args) | {"json": str(args.json)},
            "dg_lsp_path": str(Path(dg_lsp.__file__).parent), "dynamo_graphs": graphs, "graph_breaks": breaks, "rows": rows,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
