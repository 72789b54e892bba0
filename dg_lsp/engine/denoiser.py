"""The project's denoising loop, on the transformers DiffusionGemma modules.

Unlike ``generate``, this loop denoises a single canvas that follows an already-encoded
prompt, supports pinned canvas positions and a seeded starting canvas (for rewrites),
reports a draft after every step, and can be cancelled between steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.canvas import noise_ids, renoise
from dg_lsp.model.typing import vocab_size
from dg_lsp.engine.sampler import SamplerSettings, StableAndConfident, denoise_step


class Cancelled(Exception):
    """The job was cancelled between denoising steps."""


@dataclass(frozen=True)
class CanvasSpec:
    """The canvas to denoise: its length and optional seed tokens / pins."""

    length: int
    #: Starting tokens (e.g. the current selection for a rewrite); None = pure noise.
    seed_ids: list[int] | None = None
    #: Fraction of seeded tokens renoised before the first step (0 keeps them all).
    seed_noise: float = 1.0
    #: Positions whose token is fixed to ``seed_ids`` and never resampled.
    pinned: list[bool] | None = None
    #: The model's absorbing noise token (None: DiffusionGemma's uniform random tokens).
    noise_id: int | None = None


@dataclass(frozen=True)
class Draft:
    """The argmax canvas after one step."""

    step: int
    max_steps: int
    canvas: list[int]
    final: bool


@dataclass
class DenoiseOutcome:
    """The final canvas and how it was reached."""

    canvas: list[int]
    steps: int
    stopped_early: bool
    step_ms: list[float] = field(default_factory=list)


def _start_canvas(
    spec: CanvasSpec, vocab_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    noise = noise_ids((1, spec.length), vocab_size, generator, device, spec.noise_id)
    if spec.seed_ids is None:
        return noise, None, None
    seed = torch.tensor([spec.seed_ids[: spec.length]], dtype=torch.long, device=device)
    if seed.shape[1] < spec.length:
        seed = torch.cat([seed, noise[:, seed.shape[1] :]], dim=1)
    pinned = None
    if spec.pinned is not None:
        pins = (spec.pinned + [False] * spec.length)[: spec.length]
        pinned = torch.tensor([pins], dtype=torch.bool, device=device)
    start = renoise(seed, spec.seed_noise, vocab_size, generator, keep=pinned, noise_id=spec.noise_id)
    return start, pinned, (seed if pinned is not None else None)


@dataclass
class CanvasRow:
    """One canvas being denoised after its encoded prompt: everything carried from step to step.

    ``cache`` is the prompt's decoder cache; None for a row whose prompt states live elsewhere
    (a slot of the engine server's :class:`~dg_lsp.engine.batched_cache.BatchedStaticKV`).
    """

    cache: DynamicCache | None
    prompt_length: int
    spec: CanvasSpec
    settings: SamplerSettings
    generator: torch.Generator
    canvas: torch.Tensor
    positions: torch.Tensor
    stopper: StableAndConfident
    pinned: torch.Tensor | None = None
    pinned_ids: torch.Tensor | None = None
    self_conditioning: torch.Tensor | None = None
    argmax: torch.Tensor | None = None
    step: int = 0
    done: bool = False
    stopped_early: bool = False
    step_ms: list[float] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        model: DiffusionGemmaForBlockDiffusion,
        cache: DynamicCache | None,
        prompt_length: int,
        spec: CanvasSpec,
        settings: SamplerSettings,
        seed: int,
    ) -> CanvasRow:
        """A fresh row: the starting canvas drawn from ``seed``."""
        device = model.device
        generator = torch.Generator(device=device).manual_seed(seed)
        canvas, pinned, pinned_ids = _start_canvas(spec, vocab_size(model), generator, device)
        positions = torch.arange(prompt_length, prompt_length + spec.length, device=device)[None, :]
        return cls(
            cache=cache,
            prompt_length=prompt_length,
            spec=spec,
            settings=settings,
            generator=generator,
            canvas=canvas,
            positions=positions,
            stopper=StableAndConfident(settings),
            pinned=pinned,
            pinned_ids=pinned_ids,
        )

    def advance(self, logits: torch.Tensor, vocab: int, embed_dtype: torch.dtype, started: float) -> Draft:
        """Take one step's decoder logits ``(1, length, vocab)``; ``started`` is the step's ``perf_counter``."""
        self.step += 1
        result = denoise_step(
            self.settings,
            logits.float(),
            self.canvas,
            remaining=self.settings.max_steps - self.step + 1,
            vocab_size=vocab,
            generator=self.generator,
            pinned=self.pinned,
            pinned_ids=self.pinned_ids,
            noise_id=self.spec.noise_id,
        )
        self.canvas, self.argmax = result.next_canvas, result.argmax_canvas
        self.self_conditioning = result.logits.to(embed_dtype)
        stop = self.stopper.update(result.argmax_canvas, result.mean_entropy) or result.settled
        self.done = stop or self.step >= self.settings.max_steps
        self.stopped_early = stop and self.step < self.settings.max_steps
        self.step_ms.append((time.perf_counter() - started) * 1000.0)
        return Draft(
            step=self.step, max_steps=self.settings.max_steps, canvas=result.argmax_canvas[0].tolist(), final=self.done
        )

    def outcome(self) -> DenoiseOutcome:
        """The result so far (the last argmax canvas)."""
        canvas = self.argmax if self.argmax is not None else self.canvas
        return DenoiseOutcome(
            canvas=canvas[0].tolist(), steps=self.step, stopped_early=self.stopped_early, step_ms=list(self.step_ms)
        )


def embedding_dtype(model: DiffusionGemmaForBlockDiffusion) -> torch.dtype:
    """The dtype self-conditioning logits are fed back in."""
    weight: torch.Tensor = model.model.decoder.embed_tokens.weight
    return weight.dtype


@torch.inference_mode()
def row_logits(model: DiffusionGemmaForBlockDiffusion, row: CanvasRow) -> torch.Tensor:
    """One decoder forward for a single canvas after its own prompt cache."""
    if row.cache is None:
        raise ValueError("the row's prompt states are not in a cache of its own")
    logits: torch.Tensor = model(
        decoder_input_ids=row.canvas,
        past_key_values=row.cache,
        self_conditioning_logits=row.self_conditioning,
        decoder_position_ids=row.positions,
    ).logits
    return logits


@torch.inference_mode()
def denoise(
    model: DiffusionGemmaForBlockDiffusion,
    cache: DynamicCache,
    prompt_length: int,
    spec: CanvasSpec,
    settings: SamplerSettings,
    seed: int,
    on_draft: Callable[[Draft], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> DenoiseOutcome:
    """Denoise one canvas after the prompt held in ``cache``; raises :class:`Cancelled`."""
    row = CanvasRow.start(model, cache, prompt_length, spec, settings, seed)
    vocab, embed_dtype = vocab_size(model), embedding_dtype(model)
    while not row.done:
        if cancelled is not None and cancelled():
            raise Cancelled()
        started = time.perf_counter()
        logits = row_logits(model, row)
        draft = row.advance(logits, vocab, embed_dtype, started)
        if on_draft is not None:
            on_draft(draft)
    return row.outcome()
