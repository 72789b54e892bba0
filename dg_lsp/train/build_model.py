"""One command that reproduces the embedded model from scratch.

    python -m dg_lsp.train.build_model --minutes 65

Steps (each skipped when its output exists, so an interrupted run resumes):
corpus (registries → .work/corpus) → tokenizer (.work/tokenizer) → training (.work/train,
resumable) → export into ``dg_lsp/models/dg-code-small/`` with a MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dg_lsp.model.loader import EMBEDDED_MODEL_DIR
from dg_lsp.train.model_card import write_model_card


def _run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main(argv: list[str] | None = None) -> int:
    """Build corpus, tokenizer and model; install the model into the package."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(".work"))
    parser.add_argument("--minutes", type=float, default=65.0, help="training wall time (per call; resumes)")
    parser.add_argument("--total-steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--max-canvas", type=int, default=128)
    parser.add_argument("--geometry", default="small")
    parser.add_argument("--corpus-mb", type=float, default=70.0)
    parser.add_argument("--out", type=Path, default=EMBEDDED_MODEL_DIR)
    parser.add_argument("--init-from", type=Path, default=None, help="warm start from this model directory")
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    args = parser.parse_args(argv)
    py = sys.executable
    corpus, tokenizer, train = args.work / "corpus", args.work / "tokenizer", args.work / "train"
    if not (corpus / "corpus.jsonl").exists():
        _run([py, "-m", "dg_lsp.train.corpus", "--out", str(corpus), "--max-mb", str(args.corpus_mb)])
    if not (tokenizer / "tokenizer.json").exists():
        _run([py, "-m", "dg_lsp.train.tokenizer", "--corpus", str(corpus / "corpus.jsonl"), "--out", str(tokenizer),
              "--vocab-size", "8192", "--sample-mb", "20"])
    started = time.monotonic()
    _run([py, "-m", "dg_lsp.train.trainer", "--corpus", str(corpus / "corpus.jsonl"), "--tokenizer", str(tokenizer),
          "--out", str(train), "--geometry", args.geometry, "--minutes", str(args.minutes),
          "--total-steps", str(args.total_steps), "--batch-size", str(args.batch_size),
          "--context-tokens", str(args.context_tokens), "--max-canvas", str(args.max_canvas), "--resume",
          "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads),
          *(["--init-from", str(args.init_from)] if args.init_from else [])])
    wall = time.monotonic() - started
    export = train / "model"
    args.out.mkdir(parents=True, exist_ok=True)
    for item in export.iterdir():
        (args.out / item.name).write_bytes(item.read_bytes())
    summary = json.loads((train / "train-summary.json").read_text())
    manifest = json.loads((corpus / "manifest.json").read_text())
    command = "python -m dg_lsp.train.build_model " + " ".join(argv if argv is not None else sys.argv[1:])
    write_model_card(args.out, summary, manifest, command, wall)
    print(f"installed the model into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
