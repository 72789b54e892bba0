"""Train a small DiffusionGemma-architecture code model on FIM holes (CPU or GPU, resumable).

Each step: encode the prompts (causal encoder writes the KV cache), noise the clean canvases
with DiffusionGemma's uniform-token renoising at a random level per example, optionally run
a no-grad decoder pass to get self-conditioning logits (as the sampler feeds the previous
step's logits at inference), and train the decoder to predict the clean canvas.

Every token teaches: the encoder is causal and shares the decoder's weights, so its last
hidden state through the tied ``lm_head`` (with the model's logit soft-capping) gives a
next-token loss on every context token (``--lm-weight``). In the canvas loss the middle and
its first ``<eom>`` count fully, the remaining ``<eom>`` padding only ``--eom-weight``.
``--objective lm`` trains that next-token loss alone (no decoder pass, no noise): a causal
pre-training phase for the shared weights (a step without the two decoder passes: 1.3-1.9x cheaper on a CPU).

    python -m dg_lsp.train.trainer --corpus .work/corpus/corpus.jsonl \\
        --tokenizer .work/tokenizer --out .work/train --minutes 60 \\
        --init-from dg_lsp/models/dg-code-small --threads 2

``touch OUT/STOP`` ends a run cleanly (checkpoint + export) at the next step.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.canvas import LayoutTokens, layout_overhead, renoise, resolve_layout_tokens
from dg_lsp.engine.static_cache import attention_masks
from dg_lsp.model.checkpoint import new_model, save_checkpoint
from dg_lsp.model.geometry import GEOMETRIES
from dg_lsp.model.loader import TRAINING_FACTS, noise_token_id, training_facts
from dg_lsp.model.layer_order import stable_layer_type_order
from dg_lsp.model.typing import text_config, vocab_size
from dg_lsp.train import data_parallel
from dg_lsp.train.data_parallel import Group
from dg_lsp.train.examples import Example, ExampleMaker, SourceFile, parallel_stream, read_corpus

#: Sampling weight of each language's files (by bytes, then scaled by this factor).
LANGUAGE_WEIGHT: dict[str, float] = {"python": 6.0, "javascript": 1.5, "typescript": 1.5, "tsx": 0.5}
#: Every HELD_OUT_EVERY-th corpus file is held out (never trained on): eval loss and multi-line holes.
HELD_OUT_EVERY = 50


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
    #: Share of examples noised the way the sampler leaves a canvas (see :func:`draw_noise`).
    sampler_noise_share: float = 0.5
    seed: int = 0
    #: Weight of the encoder's next-token loss (0 = off).
    lm_weight: float = 0.5
    #: Weight of each ``<eom>`` after the first in the canvas loss.
    eom_weight: float = 0.1
    #: Share of holes in the editor's new-line layout (whole lines with their indentation).
    editor_line_share: float = 0.35
    #: Absorbing noise: the token id every noised position holds (None: DiffusionGemma's uniform random tokens).
    noise_id: int | None = None
    #: ``"infill"``: canvas loss + ``lm_weight`` x next-token loss; ``"lm"``: the encoder's next-token loss alone.
    objective: str = "infill"


#: The training objectives ``--objective`` takes.
OBJECTIVES = ("infill", "lm")


@dataclass
class Batch:
    """Padded tensors for one step."""

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    canvas: torch.Tensor
    positions: torch.Tensor
    decoder_mask: torch.Tensor
    #: Per-position canvas loss weights (middle + first ``<eom>``: 1, later padding: eom weight).
    canvas_weight: torch.Tensor
    #: Which prompt positions are scored by the next-token loss (target is ``prompt[:, 1:]``).
    lm_mask: torch.Tensor
    tokens: int
    #: ``(batch, canvas)`` bool: the middle and its first ``<eom>`` (the rest is ``<eom>`` padding).
    middle_region: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        """The same batch with its tensors on ``device``."""
        return Batch(
            self.prompt.to(device), self.prompt_mask.to(device), self.canvas.to(device), self.positions.to(device),
            self.decoder_mask.to(device), self.canvas_weight.to(device), self.lm_mask.to(device), self.tokens,
            self.middle_region.to(device),
        )


def collate(examples: list[Example], layout: LayoutTokens, eom_weight: float = 1.0, width: int = 0) -> Batch:
    """Right-pad prompts to the longest (at least ``width``: fixed shapes); a batch shares one canvas length."""
    pad = layout.pad
    width = max(width, *(len(e.prompt) for e in examples))
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
    index = torch.arange(canvas.shape[1])[None, :]
    middle = torch.tensor([[e.middle_tokens] for e in examples])
    middle_region = index <= middle
    canvas_weight = torch.where(middle_region, 1.0, eom_weight)
    markers = torch.tensor(sorted({layout.bos, layout.fim_prefix, layout.fim_suffix, layout.fim_middle, pad}))
    targets = prompt[:, 1:]
    lm_mask = mask[:, 1:] & ~torch.isin(targets, markers)
    return Batch(prompt, mask, canvas, positions, decoder_mask, canvas_weight, lm_mask, tokens, middle_region)


def batches(stream: Iterator[Example], batch_size: int) -> Iterator[list[Example]]:
    """Group examples by canvas length into batches."""
    buckets: dict[int, list[Example]] = {}
    for example in stream:
        bucket = buckets.setdefault(len(example.canvas), [])
        bucket.append(example)
        if len(bucket) == batch_size:
            yield bucket
            buckets[len(example.canvas)] = []


def _softcapped(model: DiffusionGemmaForBlockDiffusion, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of the tied ``lm_head`` with the model's final soft-capping (as its forward does)."""
    logits: torch.Tensor = model.lm_head(hidden)
    cap = model.final_logit_softcapping
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass
class Losses:
    """The step's loss and its parts (floats for logging; the canvas parts are None under ``--objective lm``)."""

    total: torch.Tensor
    canvas: float | None
    middle: float | None
    lm: float


@dataclass
class Noise:
    """The random draws of one step, made outside the (compilable) loss: generators stay eager."""

    #: The renoised canvas the decoder sees.
    noisy: torch.Tensor
    #: ``(batch,)`` bool: which examples get self-conditioning logits.
    use_sc: torch.Tensor
    #: ``(batch, 1, 1)`` temperature of the self-conditioning logits.
    sc_temperature: torch.Tensor


def draw_noise(
    canvas: torch.Tensor,
    vocab_size: int,
    config: TrainConfig,
    generator: torch.Generator,
    middle_region: torch.Tensor | None = None,
) -> Noise:
    """A random noise level per example, DiffusionGemma's uniform renoising, and the self-conditioning draws.

    With ``middle_region`` given, a ``config.sampler_noise_share`` of the examples is noised the
    way the entropy-bound sampler leaves a canvas: it accepts the confident ``<eom>`` padding
    first, so while the middle is still mostly random tokens the padding after it is already
    clean. Those examples keep their level ``t`` on the middle and its first ``<eom>`` and get a
    lower one, uniform in ``[0, t)``, on the padding. With iid noise only, a clean padding means
    a clean canvas, and a model trained so copies the sampler's random tokens into its answer.
    """
    n, device = canvas.shape[0], canvas.device
    level = config.min_noise + (1 - config.min_noise) * torch.rand(n, generator=generator, device=device)
    per_position = level[:, None].expand(canvas.shape)
    if middle_region is not None and config.sampler_noise_share > 0:
        sampler_like = torch.rand(n, generator=generator, device=device) < config.sampler_noise_share
        tail_level = level * torch.rand(n, generator=generator, device=device)
        per_position = torch.where(sampler_like[:, None] & ~middle_region, tail_level[:, None], per_position)
    noisy = renoise(canvas, per_position, vocab_size, generator, noise_id=config.noise_id)
    use_sc = torch.rand(n, generator=generator, device=device) < config.self_conditioning_prob
    sc_temperature = 0.4 + 0.4 * torch.rand(n, 1, 1, generator=generator, device=device)
    return Noise(noisy, use_sc, sc_temperature)


def sampler_state_noise(
    batch: Batch, vocab_size: int, generator: torch.Generator, noise_id: int | None = None
) -> Noise:
    """The canvas right after the sampler accepted the padding: middle (and first ``<eom>``) all random, padding clean.

    No self-conditioning (the first steps' state); held-out loss on it says how well the model
    writes a middle from nothing instead of copying the random tokens in front of it.
    """
    canvas = batch.canvas
    noisy = renoise(canvas, batch.middle_region.to(torch.float32), vocab_size, generator, noise_id=noise_id)
    n = canvas.shape[0]
    return Noise(noisy, torch.zeros(n, dtype=torch.bool, device=canvas.device), torch.ones(n, 1, 1, device=canvas.device))


#: ``(total, canvas, middle, lm)`` losses as tensors (nothing read back to the host).
LossTerms = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def decoder_masks(model: DiffusionGemmaForBlockDiffusion, batch: Batch) -> dict[str, torch.Tensor]:
    """The canvas's 4-D attention masks, built here: every canvas row sees the real prompt keys and the whole canvas.

    What transformers builds from the 2-D ``decoder_mask`` (the decoder attends fully, in sliding layers too), without
    its ``mask.all()`` test on a dynamic cache: under ``--compile`` that test broke the step into a graph per decoder
    call, and the extra graphs ran into dynamo's recompile limit.
    """
    config = text_config(model)
    keys = {layer_type: batch.decoder_mask for layer_type in set(config.layer_types or ())}
    return attention_masks(keys, batch.canvas.shape[1], str(model.config._attn_implementation), model.dtype)


def loss_terms(
    model: DiffusionGemmaForBlockDiffusion,
    batch: Batch,
    noise: Noise,
    lm_weight: float,
    self_conditioning: bool,
) -> LossTerms:
    """The step's losses with no host sync and no data-dependent shapes (one graph per batch shape).

    The encoder's next-token loss is a masked mean over every prompt position; the
    self-conditioning pass runs for the whole batch and its logits reach only the examples
    whose ``use_sc`` is set (the decoder zeroes the signal elsewhere).
    """
    cache, hidden = _encode(model, batch)
    lm = _next_token_loss(model, batch, hidden) if lm_weight > 0 else torch.zeros((), device=batch.prompt.device)
    masks = decoder_masks(model, batch)
    sc_logits = None
    if self_conditioning:
        with torch.no_grad():
            first = model(
                decoder_input_ids=noise.noisy,
                past_key_values=cache,
                decoder_attention_mask=masks,
                decoder_position_ids=batch.positions,
            ).logits
            sc_logits = (first / noise.sc_temperature).to(model.dtype)
    logits = model(
        decoder_input_ids=noise.noisy,
        past_key_values=cache,
        decoder_attention_mask=masks,
        decoder_position_ids=batch.positions,
        self_conditioning_logits=sc_logits,
        self_conditioning_mask=noise.use_sc if sc_logits is not None else None,
    ).logits
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.canvas.reshape(-1), reduction="none"
    ).view_as(batch.canvas)
    weight = batch.canvas_weight
    canvas_loss = (per_token * weight).sum() / weight.sum()
    full = (weight == 1.0).to(per_token.dtype)
    middle = (per_token.detach() * full).sum() / full.sum()
    return canvas_loss + lm_weight * lm, canvas_loss.detach(), middle, lm.detach()


def lm_terms(model: DiffusionGemmaForBlockDiffusion, batch: Batch) -> torch.Tensor:
    """The encoder's next-token loss alone (``--objective lm``): no decoder pass, no noise."""
    return _next_token_loss(model, batch, _encode(model, batch)[1])


def _encode(model: DiffusionGemmaForBlockDiffusion, batch: Batch) -> tuple[DynamicCache, torch.Tensor]:
    """Run the causal encoder over the prompts: the KV cache it wrote and its last hidden states."""
    cache = DynamicCache(config=text_config(model))
    encoded = model.model.encoder(input_ids=batch.prompt, attention_mask=batch.prompt_mask, past_key_values=cache)
    return cache, encoded.last_hidden_state


def _next_token_loss(model: DiffusionGemmaForBlockDiffusion, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
    """Masked mean cross-entropy of the encoder's hidden states against the next prompt token."""
    logits = _softcapped(model, hidden[:, :-1])
    per_position = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.prompt[:, 1:].reshape(-1), reduction="none"
    ).view_as(batch.lm_mask)
    scored = batch.lm_mask.to(per_position.dtype)
    return (per_position * scored).sum() / scored.sum().clamp(min=1.0)


#: The loss function a step runs: :func:`loss_terms` or its compiled form.
TermsFunction = Callable[[DiffusionGemmaForBlockDiffusion, Batch, Noise, float, bool], LossTerms]


def diffusion_loss(
    model: DiffusionGemmaForBlockDiffusion,
    batch: Batch,
    vocab_size: int,
    config: TrainConfig,
    generator: torch.Generator,
    terms: TermsFunction = loss_terms,
    noise: Noise | None = None,
) -> Losses:
    """Weighted cross-entropy of the clean canvas given a renoised one (``noise``, else drawn), plus the encoder's next-token loss."""
    batch = batch.to(model.device)
    if noise is None:
        noise = draw_noise(batch.canvas, vocab_size, config, generator, batch.middle_region)
    total, canvas, middle, lm = terms(model, batch, noise, config.lm_weight, config.self_conditioning_prob > 0)
    return Losses(total=total, canvas=float(canvas), middle=float(middle), lm=float(lm))


def next_token_step_loss(
    model: DiffusionGemmaForBlockDiffusion,
    batch: Batch,
    vocab_size: int,
    config: TrainConfig,
    generator: torch.Generator,
    terms: Callable[[DiffusionGemmaForBlockDiffusion, Batch], torch.Tensor] = lm_terms,
) -> Losses:
    """``--objective lm``'s step loss: the encoder's next-token loss alone (same signature as :func:`diffusion_loss`)."""
    total = terms(model, batch.to(model.device))
    return Losses(total=total, canvas=None, middle=None, lm=float(total.detach()))


def trained_tokens(batch: Batch, objective: str) -> int:
    """Tokens a step trains on: prompt + canvas, or the prompt alone under ``--objective lm``."""
    return batch.tokens if objective == "infill" else int(batch.prompt_mask.sum())


def learning_rate(config: TrainConfig, step: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up then cosine decay to 10%, over the steps or, when further on, ``time_fraction`` of the time budget.

    ``time_fraction`` (``--time-schedule``: elapsed / ``--minutes``) makes a run whose speed is not known in
    advance (a lent GPU's few minutes) end its decay at its deadline instead of being cut off at a high rate.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    by_steps = (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, max(by_steps, time_fraction))
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


def evaluate(
    model: DiffusionGemmaForBlockDiffusion, held_out: list[Batch], config: TrainConfig, autocast: bool = False
) -> dict[str, float]:
    """Mean losses on fixed held-out batches (fixed noise seed): canvas (weighted), middle-only and LM.

    ``middle`` uses iid noise whatever ``config.sampler_noise_share`` says, so that runs stay
    comparable; ``sampler_middle`` is the middle loss in :func:`sampler_state_noise`'s state.
    """
    model.train(False)
    generator = torch.Generator(device=model.device).manual_seed(1234)
    state_generator = torch.Generator(device=model.device).manual_seed(4321)
    iid = replace(config, sampler_noise_share=0.0, lm_weight=1.0)  # the same losses whatever the objective trains
    vocab = vocab_size(model)
    sums = {"canvas": 0.0, "middle": 0.0, "lm": 0.0, "sampler_middle": 0.0}
    with torch.no_grad(), torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in held_out:
            losses = diffusion_loss(model, batch, vocab, iid, generator)
            sums["canvas"] += _known(losses.canvas)
            sums["middle"] += _known(losses.middle)
            sums["lm"] += losses.lm
            state = sampler_state_noise(batch.to(model.device), vocab, state_generator, config.noise_id)
            sums["sampler_middle"] += _known(diffusion_loss(model, batch, vocab, iid, generator, noise=state).middle)
    model.train()
    return {key: value / max(1, len(held_out)) for key, value in sums.items()}


def _known(value: float | None) -> float:
    if value is None:
        raise ValueError("the infilling loss reported no canvas loss")
    return value


def load_weights(model: DiffusionGemmaForBlockDiffusion, model_dir: Path) -> None:
    """Warm start: copy the weights of a saved checkpoint directory (same geometry) into ``model``."""
    loaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(model_dir), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [key for key in missing if "vision" not in key]
    if real_missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not match the geometry (missing {real_missing[:3]}, unexpected {unexpected[:3]})")


def export_model(model: DiffusionGemmaForBlockDiffusion, tokenizer_dir: Path, export: Path, config: TrainConfig, step: int, tokens: int) -> None:
    """Save a bf16 copy of the model (the training copy stays float32) with its training facts."""
    copy = DiffusionGemmaForBlockDiffusion(model.config)
    copy.load_state_dict(model.state_dict())
    copy.train(False)
    save_checkpoint(copy.bfloat16(), tokenizer_dir, export)
    facts: dict[str, Any] = {
        "context_tokens": config.context_tokens, "max_canvas": config.max_canvas, "steps": step, "tokens": tokens,
    }
    if config.noise_id is not None:
        facts["noise_token"] = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).id_to_token(config.noise_id)
    (export / TRAINING_FACTS).write_text(json.dumps(facts, indent=2) + "\n")


def recorded_noise_token(model_dir: Path) -> str | None:
    """The ``noise_token`` a model directory's ``dg_lsp.json`` records (None: uniform noise, or no record)."""
    name = training_facts(model_dir).get("noise_token")
    return name if isinstance(name, str) else None


def chosen_noise_token(args: argparse.Namespace) -> str | None:
    """``--noise-token``; else the one the run being resumed, or the warm-start model, was trained with."""
    if args.noise_token is not None:
        return str(args.noise_token)
    if args.resume and _state_path(args.out).exists():
        return recorded_noise_token(args.out / "model")
    return recorded_noise_token(args.init_from) if args.init_from is not None else None


def _noise_id(tokenizer: Tokenizer, name: str | None) -> int | None:
    try:
        return noise_token_id(tokenizer, name)
    except ValueError as exc:
        raise ValueError(f"--noise-token {exc}") from exc


def _stop_requested(out: Path) -> bool:
    return (out / "STOP").exists()


def train(args: argparse.Namespace, dp: Group | None = None) -> Path:
    """Run (or resume) training for ``args.minutes`` and export the model directory.

    In a data-parallel group ``dp`` (``--procs``) every process runs this with its own example
    stream; gradients are averaged each step and only rank 0 evaluates, logs and writes.
    """
    dp = dp or Group()
    leader = dp.leader
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
        warmup_steps=args.warmup_steps,
        total_steps=args.total_steps,
        self_conditioning_prob=args.self_conditioning,
        seed=args.seed,
        lm_weight=args.lm_weight,
        eom_weight=args.eom_weight,
        editor_line_share=args.editor_line_share,
        sampler_noise_share=args.sampler_noise_share,
        noise_id=_noise_id(tokenizer, chosen_noise_token(args)),
        objective=args.objective,
    )
    torch.manual_seed(config.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif dp.world > 1:  # the cores shared out between the processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dp.world))
    stream_offset = 7_919 * dp.rank  # each process its own examples and noise (rank 0: a single process's)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = bool(args.bf16) or device.type == "cuda"
    model = new_model(GEOMETRIES[config.geometry], tokenizer, config.seed)
    step, tokens_seen, history = 0, 0, []
    resumed = args.resume and _state_path(out).exists()
    if args.init_from is not None and not resumed:
        load_weights(model, args.init_from)
        if leader:
            print(f"warm start from {args.init_from}")
    model = model.to(device)  # type: ignore[arg-type]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    if resumed:
        state = torch.load(_state_path(out), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_seen, history = state["step"], state.get("tokens", 0), state.get("history", [])
        if leader:
            print(f"resumed at step {step} ({tokens_seen / 1e6:.1f}M tokens)")
    dp.broadcast_parameters(model.parameters())
    files = read_corpus(args.corpus, set(args.languages.split(",")) if args.languages else None)
    rng = random.Random(config.seed * 1_000_003 + step + stream_offset)
    held_rng = random.Random(99)
    held_files = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == 0]
    train_files = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != 0]
    maker = ExampleMaker(
        tokenizer, layout, config.context_tokens, config.max_canvas, editor_line_share=config.editor_line_share
    )
    held_out = [
        collate(group, layout, config.eom_weight)
        for group in _take(batches(maker.stream(held_files, language_weights(held_files), held_rng), config.batch_size), args.eval_batches)
    ]
    if args.workers > 0:
        examples = parallel_stream(maker, train_files, language_weights(train_files), config.seed + step + stream_offset, args.workers)
    else:
        examples = maker.stream(train_files, language_weights(train_files), rng)
    stream = batches(examples, config.batch_size)
    generator = torch.Generator(device=device).manual_seed(config.seed + step + stream_offset)
    vocab = vocab_size(model)
    if args.compile:  # the same traced graph in every process: a resumed run reuses the compile cache
        stable_layer_type_order(model)
    step_fn = _compiled_step(args.compile, config.objective)
    width = prompt_width(config, layout) if args.compile else 0
    budget = max(1e-6, args.minutes * 60)
    deadline = time.monotonic() + budget
    last_save = time.monotonic()
    bar = tqdm(desc="train", unit="step", initial=step, total=config.total_steps, dynamic_ncols=True,
               disable=args.no_progress or not leader)
    started, start_tokens = time.monotonic(), tokens_seen
    export = out / "model"
    if not history and leader:
        history.append({"step": step, "tokens": tokens_seen, **{f"eval_{k}": v for k, v in evaluate(model, held_out, config, autocast).items()}})

    def wants_stop() -> bool:
        return time.monotonic() >= deadline or step >= config.total_steps or _stop_requested(out)

    stop, _ = dp.stop_and_tokens(wants_stop(), 0)  # every process stops at the same step
    while not stop:
        batch = collate(next(stream), layout, config.eom_weight, width)
        time_fraction = 1.0 - (deadline - time.monotonic()) / budget if args.time_schedule else 0.0
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, time_fraction)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            losses = step_fn(model, batch, vocab, config, generator)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()  # type: ignore[no-untyped-call]
        dp.average_gradients(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        stop, step_tokens = dp.stop_and_tokens(wants_stop(), trained_tokens(batch, config.objective))
        tokens_seen += step_tokens
        if not leader:
            continue
        elapsed = max(1e-6, time.monotonic() - started)
        rate = (tokens_seen - start_tokens) / elapsed
        bar.update(1)
        middle = "-" if losses.middle is None else f"{losses.middle:.3f}"
        bar.set_postfix(loss=middle, lm=f"{losses.lm:.3f}", tok_s=f"{rate:.0f}")
        record: dict[str, Any] = {
            "step": step, "loss": float(losses.total.detach()), "canvas": losses.canvas, "middle": losses.middle,
            "lm": losses.lm, "tokens": tokens_seen, "time": time.time(), "tok_s": rate,
        }
        if args.no_progress and args.log_every and step % args.log_every == 0:
            print(f"step {step}: loss middle {middle} lm {losses.lm:.3f} ({rate:.0f} tok/s)", flush=True)
        if step % args.eval_every == 0:
            record |= {f"eval_{k}": v for k, v in evaluate(model, held_out, config, autocast).items()}
            line = (
                f"step {step}: eval middle {record['eval_middle']:.3f} sampler-state middle"
                f" {record['eval_sampler_middle']:.3f} lm {record['eval_lm']:.3f} ({rate:.0f} tok/s)"
            )
            bar.write(line) if not args.no_progress else print(line, flush=True)
        history.append(record)
        if time.monotonic() - last_save > args.save_minutes * 60:
            save_state(out, model, optimizer, step, {"tokens": tokens_seen, "history": history, "config": asdict(config)})
            export_model(model, args.tokenizer, export, config, step, tokens_seen)
            last_save = time.monotonic()
    bar.close()
    if not dp.same_everywhere(model.parameters()):  # every process took the same steps: a bug if not
        raise RuntimeError("data-parallel processes ended with different weights")
    if not leader:
        return export
    final_eval = evaluate(model, held_out, config, autocast)
    history.append({"step": step, "tokens": tokens_seen, "time": time.time(), **{f"eval_{k}": v for k, v in final_eval.items()}})
    save_state(out, model, optimizer, step, {"tokens": tokens_seen, "history": history, "config": asdict(config)})
    export_model(model, args.tokenizer, export, config, step, tokens_seen)
    summary = {
        "steps": step,
        "tokens": tokens_seen,
        "final_eval_loss": final_eval["middle"],
        "final_eval": final_eval,
        "config": asdict(config),
        "geometry": GEOMETRIES[config.geometry].as_dict(),
        "init_from": str(args.init_from) if args.init_from else None,
        "device": device.type,
        "bf16": autocast,
        "processes": dp.world,
    }
    (out / "train-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    print(json.dumps({k: v for k, v in summary.items() if k != "geometry"}), flush=True)
    return export


def _compiled_step(compile_step: bool, objective: str = "infill") -> Callable[..., Losses]:
    """The objective's loss function, optionally with its terms through ``torch.compile``.

    Compiled, prompts are padded to a fixed width (:func:`prompt_width`) and canvases come in
    the fixed lengths, so each canvas length compiles once (static shapes; no recompiling per
    batch as with variable widths).
    """
    if objective == "lm":
        if not compile_step:
            return next_token_step_loss
        return functools.partial(next_token_step_loss, terms=torch.compile(lm_terms, dynamic=False))
    if not compile_step:
        return diffusion_loss
    compiled = cast(TermsFunction, torch.compile(loss_terms, dynamic=False))
    return functools.partial(diffusion_loss, terms=compiled)


def prompt_width(config: TrainConfig, layout: LayoutTokens) -> int:
    """The fixed prompt width of compiled steps: the context budget plus the layout's markers."""
    return config.context_tokens + layout_overhead(layout)


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
    parser.add_argument(
        "--time-schedule", action="store_true",
        help="decay the learning rate over --minutes too (whichever of steps and time is further on): ends annealed at "
        "the deadline when the step rate is unknown (one process only)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-tokens", type=int, default=384)
    parser.add_argument("--max-canvas", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--self-conditioning", type=float, default=0.5, help="share of steps with self-conditioning")
    parser.add_argument(
        "--objective", default="infill", choices=OBJECTIVES,
        help="infill: canvas loss + --lm-weight x next-token loss; lm: the encoder's next-token loss alone (causal "
        "pre-training of the shared weights; held-out evaluation stays the same)",
    )
    parser.add_argument("--lm-weight", type=float, default=0.5, help="weight of the encoder next-token loss (0 = off)")
    parser.add_argument("--eom-weight", type=float, default=0.1, help="loss weight of <eom> padding after the first")
    parser.add_argument("--editor-line-share", type=float, default=0.35, help="share of whole-line (new line) holes")
    parser.add_argument(
        "--sampler-noise-share", type=float, default=0.5,
        help="share of examples with the sampler's noise (padding cleaner than the middle; 0 = iid noise only)",
    )
    parser.add_argument(
        "--noise-token", default=None,
        help="absorbing noise: noised canvas positions hold this token (e.g. '<unk>'); default: what the resumed run "
        "or the --init-from model was trained with, else uniform random tokens",
    )
    parser.add_argument("--init-from", type=Path, default=None, help="warm start from this model directory")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (always on for CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss step (fixed prompt width, one graph per canvas length)")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--log-every", type=int, default=10, help="with --no-progress: a log line every N steps")
    parser.add_argument("--workers", type=int, default=0, help="processes making examples (0 = in the training loop)")
    parser.add_argument("--languages", default=None, help="comma-separated languages to train on (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--save-minutes", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train-state.pt")
    parser.add_argument(
        "--procs", type=int, default=1,
        help="data-parallel processes, one per core, pinned (gradients averaged each step; the batch is per process)",
    )
    return parser


def _train_in(args: argparse.Namespace, dp: Group) -> None:
    train(args, dp)


def main() -> None:
    """Entry point."""
    args = build_parser().parse_args()
    if args.procs < 1:
        raise SystemExit("trainer: --procs must be at least 1")
    if args.time_schedule and args.procs > 1:  # each process's clock would give its own rate: weights would drift
        raise SystemExit("trainer: --time-schedule needs one process (not --procs)")
    data_parallel.run(args.procs, functools.partial(_train_in, args))


if __name__ == "__main__":
    main()
