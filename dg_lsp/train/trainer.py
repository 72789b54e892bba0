"""Train a small DiffusionGemma-architecture code model on FIM holes (CPU or GPU, resumable).

Each step: encode the prompts (causal encoder writes the KV cache), noise the clean canvases
with DiffusionGemma's uniform-token renoising at a random level per example, optionally run
a no-grad decoder pass to get self-conditioning logits (as the sampler feeds the previous
step's logits at inference), and train the decoder to predict the clean canvas.

    python -m dg_lsp.train.trainer --corpus .work/corpus/corpus.jsonl \\
        --tokenizer .work/tokenizer --out .work/train --minutes 60
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.canvas import LayoutTokens, renoise, resolve_layout_tokens
from dg_lsp.model.checkpoint import new_model, save_checkpoint
from dg_lsp.model.geometry import GEOMETRIES
from dg_lsp.model.loader import TRAINING_FACTS
from dg_lsp.model.typing import text_config, vocab_size
from dg_lsp.train.examples import Example, ExampleMaker, SourceFile, read_corpus

#: Sampling weight of each language's files (by bytes, then scaled by this factor).
LANGUAGE_WEIGHT: dict[str, float] = {"python": 3.0, "javascript": 1.5, "typescript": 1.5, "tsx": 0.5}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (saved with checkpoints)."""

    geometry: str = "small"
    batch_size: int = 16
    context_tokens: int = 384
    max_canvas: int = 128
    lr: float = 1.5e-3
    warmup_steps: int = 100
    total_steps: int = 20_000
    weight_decay: float = 0.05
    self_conditioning_prob: float = 0.5
    min_noise: float = 0.02
    seed: int = 0


@dataclass
class Batch:
    """Padded tensors for one step."""

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    canvas: torch.Tensor
    positions: torch.Tensor
    decoder_mask: torch.Tensor
    tokens: int


def collate(examples: list[Example], pad: int) -> Batch:
    """Right-pad prompts; every example of a batch shares one canvas length."""
    width = max(len(e.prompt) for e in examples)
    prompt = torch.full((len(examples), width), pad, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        prompt[row, : len(example.prompt)] = torch.tensor(example.prompt)
        mask[row, : len(example.prompt)] = True
    canvas = torch.tensor([e.canvas for e in examples], dtype=torch.long)
    lengths = mask.sum(dim=1, keepdim=True)
    positions = lengths + torch.arange(canvas.shape[1])[None, :]
    decoder_mask = torch.cat([mask, torch.ones_like(canvas, dtype=torch.bool)], dim=1)
    tokens = int(mask.sum()) + canvas.numel()
    return Batch(prompt, mask, canvas, positions, decoder_mask, tokens)


def batches(stream: Iterator[Example], batch_size: int) -> Iterator[list[Example]]:
    """Group examples by canvas length into batches."""
    buckets: dict[int, list[Example]] = {}
    for example in stream:
        bucket = buckets.setdefault(len(example.canvas), [])
        bucket.append(example)
        if len(bucket) == batch_size:
            yield bucket
            buckets[len(example.canvas)] = []


def diffusion_loss(
    model: DiffusionGemmaForBlockDiffusion,
    batch: Batch,
    vocab_size: int,
    config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cross-entropy of the clean canvas given a renoised one (with self-conditioning)."""
    device = model.device
    prompt, prompt_mask = batch.prompt.to(device), batch.prompt_mask.to(device)
    canvas, positions = batch.canvas.to(device), batch.positions.to(device)
    decoder_mask = batch.decoder_mask.to(device)
    n = canvas.shape[0]
    noise = config.min_noise + (1 - config.min_noise) * torch.rand(n, generator=generator, device=device)
    noisy = renoise(canvas, noise, vocab_size, generator)
    cache = DynamicCache(config=text_config(model))
    model.model.encoder(input_ids=prompt, attention_mask=prompt_mask, past_key_values=cache)
    use_sc = torch.rand(n, generator=generator, device=device) < config.self_conditioning_prob
    sc_logits = None
    if bool(use_sc.any()):
        with torch.no_grad():
            first = model(
                decoder_input_ids=noisy,
                past_key_values=cache,
                decoder_attention_mask=decoder_mask,
                decoder_position_ids=positions,
            ).logits
            temperature = 0.4 + 0.4 * torch.rand(n, 1, 1, generator=generator, device=device)
            sc_logits = (first / temperature).to(model.dtype)
    logits = model(
        decoder_input_ids=noisy,
        past_key_values=cache,
        decoder_attention_mask=decoder_mask,
        decoder_position_ids=positions,
        self_conditioning_logits=sc_logits,
        self_conditioning_mask=use_sc if sc_logits is not None else None,
    ).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), canvas.reshape(-1))


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def language_weights(files: list[SourceFile]) -> list[float]:
    """Sampling weights: file size times the language's factor."""
    return [min(len(f.text), 50_000) * LANGUAGE_WEIGHT.get(f.language, 1.0) for f in files]


def _state_path(out: Path) -> Path:
    return out / "train-state.pt"


def save_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]) -> None:
    """Write a resumable checkpoint (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "train-state.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, **extra}, tmp)
    tmp.replace(_state_path(out))


def evaluate(model: DiffusionGemmaForBlockDiffusion, held_out: list[list[Example]], layout: LayoutTokens, config: TrainConfig) -> float:
    """Mean diffusion loss on fixed held-out batches (fixed noise seed)."""
    model.train(False)
    generator = torch.Generator(device=model.device).manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        for group in held_out:
            total += float(diffusion_loss(model, collate(group, layout.pad), vocab_size(model), config, generator))
    model.train()
    return total / max(1, len(held_out))


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training for ``args.minutes`` and export the model directory."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    layout = resolve_layout_tokens(tokenizer.get_vocab(with_added_tokens=True))
    config = TrainConfig(
        geometry=args.geometry,
        batch_size=args.batch_size,
        context_tokens=args.context_tokens,
        max_canvas=args.max_canvas,
        lr=args.lr,
        total_steps=args.total_steps,
        seed=args.seed,
    )
    torch.manual_seed(config.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = new_model(GEOMETRIES[config.geometry], tokenizer, config.seed).to(device)  # type: ignore[arg-type]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    step, tokens_seen, history = 0, 0, []
    if args.resume and _state_path(out).exists():
        state = torch.load(_state_path(out), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_seen, history = state["step"], state.get("tokens", 0), state.get("history", [])
        print(f"resumed at step {step} ({tokens_seen / 1e6:.1f}M tokens)")
    files = read_corpus(args.corpus)
    rng = random.Random(config.seed * 1_000_003 + step)
    held_rng = random.Random(99)
    held_files = [f for i, f in enumerate(files) if i % 50 == 0]
    train_files = [f for i, f in enumerate(files) if i % 50 != 0]
    maker = ExampleMaker(tokenizer, layout, config.context_tokens, config.max_canvas)
    held_out = list(_take(batches(maker.stream(held_files, language_weights(held_files), held_rng), config.batch_size), 4))
    stream = batches(maker.stream(train_files, language_weights(train_files), rng), config.batch_size)
    generator = torch.Generator(device=device).manual_seed(config.seed + step)
    vocab = vocab_size(model)
    deadline = time.monotonic() + args.minutes * 60
    last_save = time.monotonic()
    bar = tqdm(desc="train", unit="step", initial=step, total=config.total_steps, dynamic_ncols=True)
    started, start_tokens = time.monotonic(), tokens_seen
    while time.monotonic() < deadline and step < config.total_steps:
        batch = collate(next(stream), layout.pad)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = diffusion_loss(model, batch, vocab, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += batch.tokens
        rate = (tokens_seen - start_tokens) / max(1e-6, time.monotonic() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:.0f}")
        record: dict[str, Any] = {"step": step, "loss": loss.item(), "tokens": tokens_seen}
        if step % args.eval_every == 0:
            record["eval_loss"] = evaluate(model, held_out, layout, config)
            bar.write(f"step {step}: eval loss {record['eval_loss']:.3f}")
        history.append(record)
        if time.monotonic() - last_save > args.save_minutes * 60:
            save_state(out, model, optimizer, step, {"tokens": tokens_seen, "history": history, "config": asdict(config)})
            last_save = time.monotonic()
    bar.close()
    final_eval = evaluate(model, held_out, layout, config)
    history.append({"step": step, "eval_loss": final_eval, "tokens": tokens_seen})
    save_state(out, model, optimizer, step, {"tokens": tokens_seen, "history": history, "config": asdict(config)})
    export = out / "model"
    model.train(False)
    save_checkpoint(model.to(dtype=torch.bfloat16), args.tokenizer, export)
    facts = {"context_tokens": config.context_tokens, "max_canvas": config.max_canvas, "steps": step}
    (export / TRAINING_FACTS).write_text(json.dumps(facts, indent=2) + "\n")
    summary = {
        "steps": step,
        "tokens": tokens_seen,
        "final_eval_loss": final_eval,
        "config": asdict(config),
        "geometry": GEOMETRIES[config.geometry].as_dict(),
    }
    (out / "train-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    print(json.dumps({k: v for k, v in summary.items() if k != "geometry"}))
    return export


def _take(iterator: Iterator[list[Example]], n: int) -> Iterator[list[Example]]:
    for _ in range(n):
        yield next(iterator)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--geometry", default="small", choices=sorted(GEOMETRIES))
    parser.add_argument("--minutes", type=float, default=60.0, help="stop after this much wall time")
    parser.add_argument("--total-steps", type=int, default=20_000, help="schedule length (and hard stop)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-tokens", type=int, default=384)
    parser.add_argument("--max-canvas", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--save-minutes", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train-state.pt")
    return parser


def main() -> None:
    """Entry point."""
    train(build_parser().parse_args())


if __name__ == "__main__":
    main()
