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

from dg_lsp.canvas import renoise
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
    noise = torch.randint(0, vocab_size, (1, spec.length), generator=generator, device=device)
    if spec.seed_ids is None:
        return noise, None, None
    seed = torch.tensor([spec.seed_ids[: spec.length]], dtype=torch.long, device=device)
    if seed.shape[1] < spec.length:
        seed = torch.cat([seed, noise[:, seed.shape[1] :]], dim=1)
    pinned = None
    if spec.pinned is not None:
        pins = (spec.pinned + [False] * spec.length)[: spec.length]
        pinned = torch.tensor([pins], dtype=torch.bool, device=device)
    start = renoise(seed, spec.seed_noise, vocab_size, generator, keep=pinned)
    return start, pinned, (seed if pinned is not None else None)


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
    device = model.device
    vocab = vocab_size(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    canvas, pinned, pinned_ids = _start_canvas(spec, vocab, generator, device)
    positions = torch.arange(prompt_length, prompt_length + spec.length, device=device)[None, :]
    self_conditioning: torch.Tensor | None = None
    stopper = StableAndConfident(settings)
    argmax = canvas
    outcome = DenoiseOutcome(canvas=[], steps=0, stopped_early=False)
    embed_dtype = model.model.decoder.embed_tokens.weight.dtype
    for step in range(1, settings.max_steps + 1):
        if cancelled is not None and cancelled():
            raise Cancelled()
        started = time.perf_counter()
        logits = model(
            decoder_input_ids=canvas,
            past_key_values=cache,
            self_conditioning_logits=self_conditioning,
            decoder_position_ids=positions,
        ).logits
        result = denoise_step(
            settings,
            logits.float(),
            canvas,
            remaining=settings.max_steps - step + 1,
            vocab_size=vocab,
            generator=generator,
            pinned=pinned,
            pinned_ids=pinned_ids,
        )
        canvas, argmax = result.next_canvas, result.argmax_canvas
        self_conditioning = result.logits.to(embed_dtype)
        done = stopper.update(argmax, result.mean_entropy)
        final = done or step == settings.max_steps
        outcome.step_ms.append((time.perf_counter() - started) * 1000.0)
        outcome.steps = step
        if on_draft is not None:
            on_draft(Draft(step=step, max_steps=settings.max_steps, canvas=argmax[0].tolist(), final=final))
        if done:
            outcome.stopped_early = step < settings.max_steps
            break
    outcome.canvas = argmax[0].tolist()
    return outcome
