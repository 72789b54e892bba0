"""The sampler: entropy-bound acceptance, temperature schedule, one denoising step, adaptive stopping."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dg_lsp.engine.sampler import (
    NEVER,
    SamplerSettings,
    StableAndConfident,
    denoise_step,
    entropy_bound_accept,
    softmax_entropy,
    temperature,
)

VOCAB = 20


def _reference_accept_count(row: list[float], bound: float) -> int:
    """Largest k with sum(k lowest) - max(k lowest) <= bound (at least 1)."""
    ordered = sorted(row)
    best = 1
    for k in range(1, len(ordered) + 1):
        if sum(ordered[:k]) - max(ordered[:k]) <= bound:
            best = k
    return best


# --- softmax_entropy -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 4), vocab=st.integers(2, 300), scale=st.floats(0.01, 80.0), seed=st.integers(0, 2**31 - 1),
    never=st.booleans(),
)
def test_softmax_entropy_is_the_textbook_entropy(rows: int, vocab: int, scale: float, seed: int, never: bool) -> None:
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    if never:  # the absorbing-noise token's logit
        logits[:, 0] = NEVER
    probs, entropy = softmax_entropy(logits)
    wide = logits.double()
    log_probs = torch.log_softmax(wide, dim=-1)
    reference = -(log_probs.exp() * log_probs).sum(dim=-1)
    assert not entropy.isnan().any()
    assert torch.allclose(entropy.double(), reference, rtol=1e-5, atol=2e-5)
    assert torch.allclose(probs.double(), torch.softmax(wide, dim=-1), rtol=1e-5, atol=1e-7)
    if never:
        assert (probs[:, 0] == 0).all()


def test_softmax_entropy_of_a_certain_and_a_uniform_row() -> None:
    probs, entropy = softmax_entropy(torch.tensor([[0.0, -200.0, -200.0, -200.0], [1.0, 1.0, 1.0, 1.0]]))
    assert entropy[0].item() == pytest.approx(0.0, abs=1e-30)
    assert entropy[1].item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-6)
    assert probs[1].tolist() == pytest.approx([0.25] * 4)


# --- entropy_bound_accept ------------------------------------------------------------------


def test_accepts_lowest_entropies_within_bound() -> None:
    entropy = torch.tensor([[0.5, 0.01, 0.02, 0.3, 0.05]])
    # Sorted: 0.01 0.02 0.05 0.3 0.5; sums of all but the largest: 0, .01, .03, .08, .38.
    accepted = entropy_bound_accept(entropy, 0.1)
    assert accepted.dtype == torch.bool
    assert accepted.tolist() == [[False, True, True, True, True]]
    assert entropy_bound_accept(entropy, 0.02).tolist() == [[False, True, True, False, False]]


def test_always_accepts_at_least_one_token() -> None:
    entropy = torch.tensor([[5.0, 3.0, 7.0, 4.0]])
    accepted = entropy_bound_accept(entropy, 0.1)
    assert accepted.tolist() == [[False, True, False, False]]
    assert entropy_bound_accept(entropy, 0.0).sum().item() == 1


def test_zero_entropies_are_all_accepted() -> None:
    assert entropy_bound_accept(torch.zeros(2, 6), 0.0).all()


def test_rows_are_independent() -> None:
    entropy = torch.tensor([[0.0, 0.0, 0.0, 9.0], [9.0, 8.0, 0.0, 7.0]])
    assert entropy_bound_accept(entropy, 0.1).tolist() == [
        [True, True, True, True],
        [False, False, True, True],
    ]


@pytest.mark.parametrize("bound", [0.0, 0.1, 0.5, 2.0])
def test_matches_reference_on_random_entropies(bound: float) -> None:
    generator = torch.Generator().manual_seed(3)
    entropy = torch.rand(8, 16, generator=generator, dtype=torch.float64) * 0.4
    accepted = entropy_bound_accept(entropy, bound)
    for row, mask in zip(entropy.tolist(), accepted.tolist(), strict=True):
        k = _reference_accept_count(row, bound)
        assert sum(mask) == k
        chosen = [h for h, ok in zip(row, mask, strict=True) if ok]
        rejected = [h for h, ok in zip(row, mask, strict=True) if not ok]
        # The accepted tokens are exactly the k lowest-entropy ones.
        assert not rejected or max(chosen) <= min(rejected)


# --- temperature ---------------------------------------------------------------------------


def test_temperature_schedule_endpoints() -> None:
    settings = SamplerSettings(max_steps=8, t_min=0.4, t_max=0.8)
    assert temperature(settings, 8) == pytest.approx(0.8)
    assert temperature(settings, 0) == pytest.approx(0.4)
    assert temperature(settings, 4) == pytest.approx(0.6)
    schedule = [temperature(settings, remaining) for remaining in range(8, 0, -1)]
    assert schedule == sorted(schedule, reverse=True)
    assert all(0.4 < t <= 0.8 for t in schedule)


# --- denoise_step ----------------------------------------------------------------------------


def _logits(seed: int = 0, batch: int = 2, length: int = 12, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(batch, length, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def _step(settings: SamplerSettings, logits: torch.Tensor, noise_id: int | None = None, **kwargs: torch.Tensor | None):  # type: ignore[no-untyped-def]
    current = torch.zeros(logits.shape[:2], dtype=torch.long)
    return denoise_step(
        settings,
        logits,
        current,
        remaining=settings.max_steps,
        vocab_size=VOCAB,
        generator=torch.Generator().manual_seed(1),
        pinned=kwargs.get("pinned"),
        pinned_ids=kwargs.get("pinned_ids"),
        noise_id=noise_id,
    )


def test_greedy_step_takes_the_argmax() -> None:
    logits = _logits()
    settings = SamplerSettings(max_steps=4, greedy=True)
    result = _step(settings, logits)
    assert torch.equal(result.argmax_canvas, logits.argmax(dim=-1))
    accepted = result.accepted
    assert accepted.any(dim=-1).all()
    assert torch.equal(result.next_canvas[accepted], logits.argmax(dim=-1)[accepted])
    assert int(result.next_canvas.min()) >= 0 and int(result.next_canvas.max()) < VOCAB
    assert torch.allclose(result.logits, logits / temperature(settings, settings.max_steps))
    assert isinstance(result.mean_entropy, float) and result.mean_entropy > 0


def test_greedy_step_with_a_huge_bound_accepts_the_whole_argmax() -> None:
    logits = _logits()
    result = _step(SamplerSettings(max_steps=4, entropy_bound=1e6, greedy=True), logits)
    assert result.accepted.all()
    assert torch.equal(result.next_canvas, logits.argmax(dim=-1))


def test_sampling_step_is_deterministic_for_a_seed() -> None:
    logits = _logits(scale=0.5)
    settings = SamplerSettings(max_steps=4, entropy_bound=1e6, greedy=False)
    first, second = _step(settings, logits), _step(settings, logits)
    assert torch.equal(first.next_canvas, second.next_canvas)
    # Near-uniform logits: sampling does not just reproduce the argmax.
    assert not torch.equal(first.next_canvas, logits.argmax(dim=-1))


@pytest.mark.parametrize("greedy", [True, False])
def test_pinned_positions_keep_their_ids_and_are_accepted(greedy: bool) -> None:
    logits = _logits(scale=0.1)  # high entropy everywhere: little is accepted on merit
    batch, length = logits.shape[:2]
    pinned = torch.zeros(batch, length, dtype=torch.bool)
    pinned[:, [0, 3, 7]] = True
    argmax = logits.argmax(dim=-1)
    pinned_ids = (argmax + 1) % VOCAB  # never what the model would choose
    result = _step(
        SamplerSettings(max_steps=4, entropy_bound=1e-9, greedy=greedy), logits, pinned=pinned, pinned_ids=pinned_ids
    )
    assert result.accepted[pinned].all()
    assert torch.equal(result.next_canvas[pinned], pinned_ids[pinned])
    assert torch.equal(result.argmax_canvas[pinned], pinned_ids[pinned])
    assert torch.equal(result.argmax_canvas[~pinned], argmax[~pinned])
    # With a tiny bound only one unpinned token per row is accepted on its entropy.
    assert (result.accepted & ~pinned).sum(dim=-1).tolist() == [1] * batch


def _absorbing_step(settings: SamplerSettings, logits: torch.Tensor, current: torch.Tensor, remaining: int):  # type: ignore[no-untyped-def]
    return denoise_step(
        settings, logits, current, remaining=remaining, vocab_size=VOCAB, generator=torch.Generator().manual_seed(1),
        pinned=None, pinned_ids=None, noise_id=3,
    )


@pytest.mark.parametrize("greedy", [True, False])
def test_absorbing_noise_keeps_decided_tokens_and_masks_the_rest(greedy: bool) -> None:
    logits = _logits(scale=0.1)
    batch, length = logits.shape[:2]
    current = torch.full((batch, length), 3, dtype=torch.long)
    current[:, :4] = 11  # decided at an earlier step: kept whatever the model says now
    result = _absorbing_step(SamplerSettings(max_steps=8, entropy_bound=1e-9, greedy=greedy), logits, current, 8)
    assert (result.next_canvas[:, :4] == 11).all() and (result.argmax_canvas[:, :4] == 11).all()
    rejected = ~result.accepted
    assert rejected.any() and (result.next_canvas[rejected] == 3).all()
    assert not result.settled


def test_completion_floor_decides_masked_positions_at_a_steady_rate() -> None:
    logits = _logits(scale=0.1)  # a tiny bound alone would decide one token per step
    batch, length = logits.shape[:2]
    settings = SamplerSettings(max_steps=4, entropy_bound=1e-9)
    current = torch.full((batch, length), 3, dtype=torch.long)
    masked_counts = []
    for remaining in (4, 3, 2, 1):
        masked = int((current[0] == 3).sum())
        result = _absorbing_step(settings, logits, current, remaining)
        newly = int((result.accepted[0] & (current[0] == 3)).sum())
        assert newly == -(-masked // remaining)  # ceil(masked / steps left) (more than the tiny bound's one)
        current = result.next_canvas
        masked_counts.append(int((current[0] == 3).sum()))
    assert masked_counts[-1] == 0 and result.settled  # nothing is left for a blind last-step argmax
    assert masked_counts == sorted(masked_counts, reverse=True)


# --- StableAndConfident -----------------------------------------------------------------------


def test_stops_only_after_stability_and_confidence() -> None:
    stopper = StableAndConfident(SamplerSettings(stability_threshold=1, confidence_threshold=0.005))
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])
    assert stopper.update(a, 0.0) is False  # nothing to compare with yet
    assert stopper.update(b, 0.0) is False  # changed
    assert stopper.update(b, 0.5) is False  # stable but not confident
    assert stopper.update(b, 0.001) is True  # stable and confident


def test_stability_threshold_counts_repeated_steps() -> None:
    stopper = StableAndConfident(SamplerSettings(stability_threshold=2, confidence_threshold=0.1))
    a, b = torch.tensor([[5, 6]]), torch.tensor([[5, 7]])
    assert [stopper.update(canvas, 0.0) for canvas in (a, b, b)] == [False, False, False]
    assert stopper.update(b, 0.0) is True  # b seen in the two previous steps
    assert stopper.update(a, 0.0) is False


def test_unconfident_steps_never_stop() -> None:
    stopper = StableAndConfident(SamplerSettings(stability_threshold=1, confidence_threshold=0.005))
    canvas = torch.tensor([[1, 1, 1]])
    assert not any(stopper.update(canvas, 0.005) for _ in range(6))
