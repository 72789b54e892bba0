"""Diagnostic: the model's causal encoder writing the hole line left to right, scored like infill_quality.

The encoder shares the decoder's weights and is trained with a next-token loss on every prompt
token (suffix first, then prefix: ``<bos> <lang> <fim_suffix> SUFFIX <fim_prefix> PREFIX``). So
the same weights are also a left-to-right language model that has read the suffix before the
prefix. Decoding greedily from the end of the prefix, one line, separates two questions about a
checkpoint: do its weights know the line at all (this script), and does the diffusion sampler get
that knowledge out (``benchmarks/infill_quality.py`` through the server)?

Tasks, editor layout, context cut (``dg_lsp.syntax.build_context`` with the trained context
budget), prompt ids (the engine's own ``prompt_ids``, without the trailing ``<fim_middle>``),
post-processing (``clean_completion`` with the parse check, as the server's default) and the
sandboxed scoring are the ones ``infill_quality.py`` uses; only the decoder differs. Greedy
decoding stops at the first line break, a stop token or ``--max-new`` tokens.

    python benchmarks/encoder_greedy.py --sample 300 --seed 1 --both --json benchmarks/results/encoder_greedy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from benchmarks import infill_quality as iq  # noqa: E402
from benchmarks.common import command_line, machine_info, utc_now  # noqa: E402
from benchmarks.humaneval_infill import InfillTask, load_tasks  # noqa: E402
from dg_lsp.canvas import HoleKind  # noqa: E402
from dg_lsp.engine.engine import Engine, InfillRequest  # noqa: E402
from dg_lsp.languages import get_parser  # noqa: E402
from dg_lsp.model.loader import EMBEDDED_MODEL_DIR, load_model  # noqa: E402
from dg_lsp.model.typing import text_config  # noqa: E402
from dg_lsp.syntax import build_context, clean_completion  # noqa: E402


def next_token_logits(engine: Engine, hidden: torch.Tensor) -> torch.Tensor:
    """The tied LM head with the model's final soft-cap, on the last position."""
    model = engine.loaded.model
    logits: torch.Tensor = model.lm_head(hidden[:, -1])
    cap = model.final_logit_softcapping
    return torch.tanh(logits / cap) * cap if cap is not None else logits


@torch.inference_mode()
def greedy_line(engine: Engine, prompt: list[int], max_new: int) -> str:
    """Decode one line greedily with the causal encoder after ``prompt``."""
    model, tokenizer = engine.loaded.model, engine.loaded.tokenizer
    stops = engine.markers.stop_ids
    cache = DynamicCache(config=text_config(model))
    step = torch.tensor([prompt], device=model.device)
    out: list[int] = []
    for _ in range(max_new):
        hidden = model.model.encoder(input_ids=step, past_key_values=cache).last_hidden_state
        token = int(next_token_logits(engine, hidden).argmax(-1))
        if token in stops:
            break
        out.append(token)
        if "\n" in tokenizer.decode(out, skip_special_tokens=False):
            break
        step = torch.tensor([[token]], device=model.device)
    return tokenizer.decode(out, skip_special_tokens=False).split("\n", 1)[0]


def complete(engine: Engine, task: InfillTask, mode: str, budget: int, max_new: int) -> iq.Row:
    """One task in one mode: the line the encoder writes, cleaned as the server cleans answers."""
    text = task.prompt + "\n" + ("" if mode == "hidden" else task.suffix)
    offset = len(task.prompt)
    tree = get_parser("python").parse(text.encode("utf-8"))
    context = build_context(text, tree, "python", offset, budget, engine.count_tokens)
    request = InfillRequest(
        prefix=context.prefix, suffix=context.suffix, language="python", kind=HoleKind.LINE, max_context_tokens=budget
    )
    prompt = engine.prompt_ids(request)
    layout = engine.loaded.layout
    if layout is None or prompt[-1] != layout.fim_middle:
        raise SystemExit("encoder_greedy: the model has no FIM layout (a chat checkpoint): nothing to measure")
    started = time.perf_counter()
    middle = greedy_line(engine, prompt[:-1], max_new)
    latency = (time.perf_counter() - started) * 1000.0
    cleaned = clean_completion(middle, context, "python", parse_check=True) or ""
    return iq.Row(
        task_id=task.task_id,
        mode=mode,
        max_steps=0,
        kind="line",
        expected=task.canonical_solution,
        completion=cleaned,
        middle=cleaned,
        latency_ms=latency,
        exact=iq.same_code(cleaned, task.canonical_solution),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--sample", type=int, default=None, help="random sample of this many tasks")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tuning-split", type=int, default=None, help="tasks outside the --sample/--seed sample")
    parser.add_argument("--limit", type=int, default=None, help="the first N tasks")
    parser.add_argument("--both", action="store_true", help="with the suffix and with it hidden")
    parser.add_argument("--hide-suffix", action="store_true")
    parser.add_argument("--max-new", type=int, default=48, help="most tokens for one line")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--jobs", type=int, default=2, help="programs executed at a time")
    parser.add_argument("--json", type=Path, default=None, help="report path")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.model).expanduser().resolve() if args.model else EMBEDDED_MODEL_DIR
    engine = Engine(load_model(path, "cpu", "float32"))
    budget = engine.loaded.context_tokens or 1024
    selection_args = argparse.Namespace(task=None, tuning_split=args.tuning_split, sample=args.sample, seed=args.seed, limit=args.limit)
    tasks, selection = iq.select(load_tasks(), selection_args)
    modes = ["suffix", "hidden"] if args.both else (["hidden"] if args.hide_suffix else ["suffix"])
    rows: list[iq.Row] = []
    with tqdm(total=len(tasks) * len(modes), desc="decoding", unit="task", file=sys.stderr, disable=args.no_progress) as bar:
        for mode in modes:
            for task in tasks:
                rows.append(complete(engine, task, mode, budget, args.max_new))
                bar.update(1)
    iq.score(rows, {t.task_id: t for t in tasks}, iq.Limits(), args.jobs)
    runs = {mode: iq.summarize([r for r in rows if r.mode == mode]) for mode in modes}
    nonempty = {mode: sum(r.passed and bool(r.completion) for r in rows if r.mode == mode) for mode in modes}
    report: dict[str, Any] = {
        "benchmark": "encoder_greedy",
        "date": utc_now(),
        "command": command_line(__file__, argv),
        "machine": machine_info(device="cpu"),
        "model": str(path),
        "selection": selection,
        "context_tokens": budget,
        "runs": [{"mode": mode, "summary": runs[mode], "passed_non_empty": nonempty[mode]} for mode in modes],
    }
    for mode in modes:
        summary = runs[mode]
        print(
            f"{iq.MODES[mode]}: pass@1 {summary['pass@1']:.1%} ({summary['passed']}/{summary['tasks']}), "
            f"exact {summary['exact']}, empty {summary['empty']}, passed with a non-empty line {nonempty[mode]}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report, "rows": [asdict(r) for r in rows]}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
