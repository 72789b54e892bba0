"""One denoising step's token selection: temperature schedule, entropy-bound acceptance, renoising.

This follows DiffusionGemma's published sampler (linear temperature schedule from ``t_max``
to ``t_min``, entropy-bound acceptance of the lowest-entropy tokens, uniform renoising of
the rest, stable-and-confident adaptive stopping) and adds what an editor needs: pinned
canvas positions that are never resampled, and a deterministic (argmax) mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dg_lsp.canvas import noise_ids


@dataclass(frozen=True)
class SamplerSettings:
    """Parameters of the entropy-bound sampler and of adaptive stopping."""

    max_steps: int = 16
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    #: Take the argmax instead of sampling (pass@1 "deterministic decoding").
    greedy: bool = True


@dataclass
class StepResult:
    """What one step produced."""

    next_canvas: torch.Tensor
    argmax_canvas: torch.Tensor
    logits: torch.Tensor
    accepted: torch.Tensor
    mean_entropy: float
    #: Absorbing noise: no position holds the noise token any more (the answer cannot change).
    settled: bool = False


#: The logit given to the absorbing noise token: never chosen, yet finite (``-inf`` would make ``p log p`` NaN).
NEVER = -1e9


def temperature(settings: SamplerSettings, remaining: int) -> float:
    """Linear schedule: ``t_max`` at the first step, ``t_min`` towards the last (``remaining`` counts down)."""
    return settings.t_min + (settings.t_max - settings.t_min) * (remaining / settings.max_steps)


def softmax_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, entropy)`` of ``softmax(logits)`` over the last dimension, in two passes over a row.

    ``H = log S - sum(e^z z) / S`` with ``z = logits - max`` and ``S = sum(e^z)``: the maximum, then both
    sums in one pass, each ``exp`` taken once, where ``-(p * log_softmax).sum()`` needs a third pass. The
    same entropy within float32 rounding (~2e-6 nats over an 8192-token vocabulary); 17-32% faster compiled on a
    CPU over 32-128 rows of 8192 (``benchmarks/RESULTS.md``, issue 12, session 26). A logit of
    :data:`NEVER` gets probability 0 and adds 0 (``0 * -1e9``; ``-inf`` would give NaN).
    """
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    weights = shifted.exp()
    total = weights.sum(dim=-1, keepdim=True)
    entropy = total.log().squeeze(-1) - (weights * shifted).sum(dim=-1) / total.squeeze(-1)
    return weights / total, entropy


def entropy_bound_accept(entropy: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """Accept the k lowest-entropy tokens with ``sum(H_1..k) - max(H_1..k) <= bound`` (per row)."""
    sorted_entropy, order = torch.sort(entropy, dim=-1)
    cumulative = torch.cumsum(sorted_entropy, dim=-1)
    chosen_sorted = (cumulative - sorted_entropy) <= bound
    return torch.zeros_like(chosen_sorted).scatter(-1, order, chosen_sorted)


def decided_pins(
    current: torch.Tensor, noise_id: torch.Tensor, pinned: torch.Tensor | None, pinned_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbing noise: every position of ``current`` not holding ``noise_id`` is decided and stays as it is.

    Returned as pins (added to ``pinned``/``pinned_ids``): a decided token is never resampled or
    renoised, so each step decides only what is still masked (the usual masked-diffusion
    sampler; DiffusionGemma's uniform noise cannot tell decided tokens from noise and re-decides all).
    """
    decided = torch.ne(current, noise_id)
    if pinned is None or pinned_ids is None:
        return decided, current
    return pinned | decided, torch.where(decided, current, pinned_ids)


def completion_floor(
    accepted: torch.Tensor, entropy: torch.Tensor, current: torch.Tensor, noise_id: torch.Tensor, remaining: torch.Tensor
) -> torch.Tensor:
    """Absorbing noise: of the positions holding ``noise_id``, decide at least the ``ceil(masked / remaining)`` lowest-entropy ones.

    The entropy bound alone may leave most of a short canvas masked until the last step, whose
    argmax then fills every masked position at once, each blind to its neighbours (a weak
    model repeats one token). With the floor the masked positions are decided at a steady rate
    and none is left for the last step. ``noise_id`` and ``remaining`` (steps left, this one
    included, >= 1) are 0-d tensors so that a compiled step takes them without recompiling.
    """
    masked = torch.eq(current, noise_id)
    need = torch.div(masked.sum(dim=-1, keepdim=True) + remaining - 1, remaining, rounding_mode="floor")
    ranked = torch.where(masked, entropy, torch.full_like(entropy, float("inf")))
    order = torch.argsort(ranked, dim=-1, stable=True)
    positions = torch.arange(entropy.shape[-1], device=entropy.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return accepted | (masked & (rank < need))


def denoise_step(
    settings: SamplerSettings,
    raw_logits: torch.Tensor,
    current: torch.Tensor,
    remaining: int,
    vocab_size: int,
    generator: torch.Generator,
    pinned: torch.Tensor | None,
    pinned_ids: torch.Tensor | None,
    noise_id: int | None = None,
) -> StepResult:
    """Select, accept and renoise canvas tokens from one decoder output.

    ``raw_logits`` is ``(batch, length, vocab)`` float32; ``pinned`` a bool mask of positions
    whose tokens stay ``pinned_ids`` whatever the model says; rejected positions get fresh
    noise (:func:`~dg_lsp.canvas.noise_ids`: uniform, or ``noise_id`` for an absorbing-noise model,
    which also gets :func:`completion_floor`).
    """
    noise_token = torch.tensor(noise_id, device=current.device) if noise_id is not None else None
    if noise_token is not None:  # absorbing noise: a decided token stays (like a pinned one)
        pinned, pinned_ids = decided_pins(current, noise_token, pinned, pinned_ids)
    logits = raw_logits / temperature(settings, remaining)
    if noise_id is not None:  # the noise token is never an answer
        logits[..., noise_id] = NEVER
    probs, entropy = softmax_entropy(logits)
    argmax = logits.argmax(dim=-1)
    if settings.greedy:
        proposal = argmax
    else:
        flat = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator)
        proposal = flat.view(argmax.shape)
    if pinned is not None and pinned_ids is not None:
        entropy = torch.where(pinned, torch.zeros_like(entropy), entropy)
        argmax = torch.where(pinned, pinned_ids, argmax)
        proposal = torch.where(pinned, pinned_ids, proposal)
    accepted = entropy_bound_accept(entropy, settings.entropy_bound)
    if pinned is not None:
        accepted |= pinned
    if noise_token is not None:
        accepted = completion_floor(accepted, entropy, current, noise_token, torch.tensor(remaining, device=current.device))
    noise = noise_ids(current.shape, vocab_size, generator, current.device, noise_id)
    next_canvas = torch.where(accepted, proposal, noise)
    return StepResult(
        next_canvas=next_canvas,
        argmax_canvas=argmax,
        logits=logits,
        accepted=accepted,
        mean_entropy=float(entropy.mean()),
        settled=noise_id is not None and not bool(torch.eq(next_canvas, noise_id).any()),
    )


class StableAndConfident:
    """Adaptive stopping: the argmax canvas repeated for ``stability_threshold`` steps and mean entropy is low."""

    def __init__(self, settings: SamplerSettings) -> None:
        self._threshold = settings.stability_threshold
        self._confidence = settings.confidence_threshold
        self._history: list[torch.Tensor] = []

    def update(self, argmax_canvas: torch.Tensor, mean_entropy: float) -> bool:
        """Record a step; true when denoising can stop."""
        stable = all(torch.equal(past, argmax_canvas) for past in self._history) and (
            len(self._history) >= self._threshold
        )
        self._history.append(argmax_canvas)
        if len(self._history) > self._threshold:
            self._history.pop(0)
        return stable and mean_entropy < self._confidence
