"""The engine on the tiny random-weight checkpoint: determinism, drafts, cancellation, seeding, budgets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from dg_lsp.canvas import HoleKind, canvas_target, encoder_ids
from dg_lsp.engine.denoiser import CanvasSpec, Cancelled, Draft, _start_canvas, denoise
from dg_lsp.engine.engine import Engine, InfillRequest
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.loader import ModelLoadError, load_model

VOCAB = 512
STEPS = 3

REQUEST = InfillRequest(
    prefix="def add(a, b):\n    return ",
    suffix="\n\nprint(add(1, 2))\n",
    language="python",
    kind=HoleKind.REST_OF_LINE,
    settings=SamplerSettings(max_steps=STEPS),
    seed=0,
)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(load_model(tiny_model_dir, "cpu", "float32"))


@pytest.fixture
def decoder_inputs(engine: Engine) -> Iterator[list[torch.Tensor]]:
    """Every canvas the decoder is run on, in order."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["decoder_input_ids"].clone())

    handle = engine.loaded.model.model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    yield seen
    handle.remove()


# --- determinism ----------------------------------------------------------------------------


def test_infill_is_deterministic_for_a_seed(engine: Engine) -> None:
    first = engine.infill(REQUEST)
    second = engine.infill(REQUEST)  # the prompt cache is reused this time
    assert second.encode.encoded_tokens == 0
    assert (first.text, first.steps, first.middle_tokens, first.ended) == (
        second.text,
        second.steps,
        second.middle_tokens,
        second.ended,
    )
    assert first.canvas_length == second.canvas_length == 32
    assert 1 <= first.steps <= STEPS
    assert first.middle_tokens <= first.canvas_length


def test_a_prefetched_prompt_is_not_encoded_again_and_changes_no_answer(tiny_model_dir: Path) -> None:
    plain, prefetching = (Engine(load_model(tiny_model_dir, "cpu", "float32")) for _ in range(2))
    other = replace(REQUEST, prefix="def sub(a, b):\n    return ")
    for engine in (plain, prefetching):
        engine.infill(other)  # the cache holds another prompt before each request
    assert prefetching.prefetch(REQUEST) is True
    assert prefetching.encodes.last is not None and prefetching.encodes.last.encoded_tokens > 0
    expected = plain.infill(REQUEST)
    got = prefetching.infill(REQUEST)
    assert expected.encode.encoded_tokens > 0
    assert got.encode.encoded_tokens == 0 and got.encode.reused_tokens == got.encode.prompt_tokens
    assert (got.text, got.steps, got.middle_tokens) == (expected.text, expected.steps, expected.middle_tokens)
    facts = prefetching.describe()["promptCache"]
    assert facts["prompts"] == 3 and facts["last"] == {
        "promptTokens": got.encode.prompt_tokens,
        "reusedTokens": got.encode.prompt_tokens,
        "encodedTokens": 0,
    }
    assert facts["encodedTokens"] == prefetching.encodes.encoded_tokens > 0


def test_different_seeds_differ(engine: Engine) -> None:
    drafts: dict[int, list[str]] = {0: [], 1: []}
    results = {
        seed: engine.infill(replace(REQUEST, seed=seed), on_draft=lambda text, *_, seed=seed: drafts[seed].append(text))
        for seed in (0, 1)
    }
    assert results[0].text != results[1].text
    assert drafts[0] != drafts[1]


# --- drafts ----------------------------------------------------------------------------------


def test_a_draft_is_delivered_after_every_step(engine: Engine) -> None:
    drafts: list[tuple[str, int, int, bool]] = []
    request = replace(REQUEST, settings=SamplerSettings(max_steps=4))
    result = engine.infill(request, on_draft=lambda text, step, max_steps, final: drafts.append((text, step, max_steps, final)))
    assert [step for _, step, _, _ in drafts] == list(range(1, result.steps + 1))
    assert [final for *_, final in drafts] == [False] * (result.steps - 1) + [True]
    assert {max_steps for _, _, max_steps, _ in drafts} == {4}
    assert drafts[-1][0] == result.text
    assert all(isinstance(text, str) for text, *_ in drafts)


def test_drafts_through_the_denoiser_are_canvases(engine: Engine) -> None:
    cache = PromptCache(engine.loaded.model)
    prompt = engine.prompt_ids(REQUEST)
    cache.encode(prompt)
    drafts: list[Draft] = []
    settings = SamplerSettings(max_steps=3)
    outcome = denoise(engine.loaded.model, cache.cache, len(prompt), CanvasSpec(length=16), settings, 0, drafts.append)
    assert [d.step for d in drafts] == list(range(1, outcome.steps + 1))
    assert drafts[-1].final and not any(d.final for d in drafts[:-1])
    assert all(len(d.canvas) == 16 and d.max_steps == 3 for d in drafts)
    assert drafts[-1].canvas == outcome.canvas
    assert len(outcome.step_ms) == outcome.steps


# --- cancellation ----------------------------------------------------------------------------


def test_cancellation_stops_within_one_step(engine: Engine, decoder_inputs: list[torch.Tensor]) -> None:
    steps_seen: list[int] = []
    request = replace(REQUEST, settings=SamplerSettings(max_steps=8))
    with pytest.raises(Cancelled):
        engine.infill(
            request,
            on_draft=lambda text, step, max_steps, final: steps_seen.append(step),
            cancelled=lambda: len(steps_seen) >= 2,
        )
    # The flag turned true after the second step's draft: no third decoder call was made.
    assert steps_seen == [1, 2]
    assert len(decoder_inputs) == 2


def test_cancelled_before_the_first_step_runs_no_decoder(engine: Engine, decoder_inputs: list[torch.Tensor]) -> None:
    drafts: list[int] = []
    with pytest.raises(Cancelled):
        engine.infill(REQUEST, on_draft=lambda text, step, *_: drafts.append(step), cancelled=lambda: True)
    assert drafts == []
    assert decoder_inputs == []


def test_engine_still_works_after_a_cancellation(engine: Engine) -> None:
    expected = engine.infill(REQUEST)
    with pytest.raises(Cancelled):
        engine.infill(REQUEST, cancelled=lambda: True)
    assert engine.infill(REQUEST).text == expected.text


# --- seeded canvases ---------------------------------------------------------------------------


def test_start_canvas_from_seed_without_noise() -> None:
    seed_ids = [100, 101, 102, 103, 104]
    spec = CanvasSpec(length=8, seed_ids=seed_ids, seed_noise=0.0)
    start, pinned, pinned_ids = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert start.shape == (1, 8)
    assert start[0, :5].tolist() == seed_ids
    assert all(0 <= t < VOCAB for t in start[0, 5:].tolist())
    assert pinned is None and pinned_ids is None


def test_start_canvas_truncates_a_long_seed() -> None:
    spec = CanvasSpec(length=4, seed_ids=list(range(100, 110)), seed_noise=0.0)
    start, _, _ = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert start.tolist() == [[100, 101, 102, 103]]


def test_start_canvas_without_seed_is_seeded_noise() -> None:
    spec = CanvasSpec(length=64)
    a, _, _ = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(5), torch.device("cpu"))
    b, _, _ = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(5), torch.device("cpu"))
    c, _, _ = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(6), torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_start_canvas_full_noise_keeps_only_pinned_positions() -> None:
    seed_ids = [7] * 64
    pins = [i % 4 == 0 for i in range(64)]
    spec = CanvasSpec(length=64, seed_ids=seed_ids, seed_noise=1.0, pinned=pins)
    start, pinned, pinned_ids = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert pinned is not None and pinned_ids is not None
    assert pinned[0].tolist() == pins
    assert pinned_ids[0].tolist() == seed_ids
    assert all(start[0, i].item() == 7 for i in range(64) if pins[i])
    assert sum(start[0, i].item() != 7 for i in range(64) if not pins[i]) >= 44  # 48 unpinned, ~all renoised


def test_start_canvas_pads_a_short_pin_list() -> None:
    spec = CanvasSpec(length=6, seed_ids=[100, 101, 102, 103, 104, 105], seed_noise=1.0, pinned=[True, True])
    start, pinned, _ = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert pinned is not None and pinned[0].tolist() == [True, True, False, False, False, False]
    assert start[0, :2].tolist() == [100, 101]


def test_denoised_output_keeps_pinned_positions(engine: Engine, decoder_inputs: list[torch.Tensor]) -> None:
    cache = PromptCache(engine.loaded.model)
    prompt = engine.prompt_ids(REQUEST)
    cache.encode(prompt)
    seed_ids = list(range(300, 316))
    pins = [True, True, False, False, True] + [False] * 10 + [True]
    spec = CanvasSpec(length=16, seed_ids=seed_ids, seed_noise=1.0, pinned=pins)
    drafts: list[Draft] = []
    outcome = denoise(
        engine.loaded.model, cache.cache, len(prompt), spec, SamplerSettings(max_steps=3), 0, drafts.append
    )
    pinned_at = [i for i, pin in enumerate(pins) if pin]
    for canvas in [outcome.canvas] + [d.canvas for d in drafts] + [c[0].tolist() for c in decoder_inputs]:
        assert [canvas[i] for i in pinned_at] == [seed_ids[i] for i in pinned_at]
    # Unpinned positions are the model's choice, not the seed.
    assert [outcome.canvas[i] for i in range(16) if not pins[i]] != [seed_ids[i] for i in range(16) if not pins[i]]


def test_rewrite_request_starts_from_the_selection(engine: Engine, decoder_inputs: list[torch.Tensor]) -> None:
    selection = "return a + b"
    request = replace(
        REQUEST,
        kind=HoleKind.SELECTION,
        seed_text=selection,
        seed_noise=0.0,
        max_canvas=32,
        settings=SamplerSettings(max_steps=2),
    )
    result = engine.infill(request)
    assert result.canvas_length == 32
    seed_ids = engine.loaded.tokenizer.encode(selection, add_special_tokens=False).ids
    expected = canvas_target(engine.loaded.layout, seed_ids, 32)
    assert decoder_inputs[0][0].tolist() == expected


def test_seeded_request_grows_the_canvas_for_a_long_selection(engine: Engine) -> None:
    selection = "x = 1\n" * 40
    needed = engine.count_tokens(selection)
    request = replace(
        REQUEST, kind=HoleKind.REST_OF_LINE, seed_text=selection, max_canvas=256, settings=SamplerSettings(max_steps=1)
    )
    result = engine.infill(request)
    assert result.canvas_length > needed
    assert result.canvas_length in (64, 128, 256)


def test_a_selection_longer_than_the_canvas_is_refused(engine: Engine, decoder_inputs: list[torch.Tensor]) -> None:
    selection = "value = compute(1, 2, 3)\n" * 20
    assert engine.count_tokens(selection) >= 32
    request = replace(REQUEST, kind=HoleKind.SELECTION, seed_text=selection, max_canvas=32)
    with pytest.raises(ValueError, match="select less text"):
        engine.infill(request)
    assert decoder_inputs == []


# --- prompt budget -------------------------------------------------------------------------------


def _split(engine: Engine, ids: list[int]) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids) of an encoder sequence."""
    layout = engine.loaded.layout
    assert ids[0] == layout.bos and ids[2] == layout.fim_suffix and ids[-1] == layout.fim_middle
    at = ids.index(layout.fim_prefix)
    return ids[at + 1 : -1], ids[3:at]


def test_prompt_within_budget_is_untouched(engine: Engine) -> None:
    ids = engine.prompt_ids(REQUEST)
    tok = engine.loaded.tokenizer
    prefix = tok.encode(REQUEST.prefix, add_special_tokens=False).ids
    suffix = tok.encode(REQUEST.suffix, add_special_tokens=False).ids
    assert ids == encoder_ids(engine.loaded.layout, prefix, suffix, "python")


def test_prompt_budget_keeps_text_nearest_the_hole(engine: Engine) -> None:
    prefix = "".join(f"p{i} = {i}\n" for i in range(60))
    suffix = "".join(f"s{i} = {i}\n" for i in range(60))
    request = replace(REQUEST, prefix=prefix, suffix=suffix, max_context_tokens=40)
    full_prefix = engine.loaded.tokenizer.encode(prefix, add_special_tokens=False).ids
    full_suffix = engine.loaded.tokenizer.encode(suffix, add_special_tokens=False).ids
    assert len(full_prefix) > 40 and len(full_suffix) > 40
    kept_prefix, kept_suffix = _split(engine, engine.prompt_ids(request))
    assert len(kept_prefix) + len(kept_suffix) == 40
    assert kept_prefix and kept_suffix
    # The end of the prefix and the start of the suffix (both next to the hole) survive.
    assert kept_prefix == full_prefix[-len(kept_prefix) :]
    assert kept_suffix == full_suffix[: len(kept_suffix)]
    assert len(kept_suffix) >= 40 // 4


def test_prompt_budget_gives_a_short_side_room_to_the_other(engine: Engine) -> None:
    prefix = "".join(f"p{i} = {i}\n" for i in range(60))
    request = replace(REQUEST, prefix=prefix, suffix="\n", max_context_tokens=40)
    full_prefix = engine.loaded.tokenizer.encode(prefix, add_special_tokens=False).ids
    kept_prefix, kept_suffix = _split(engine, engine.prompt_ids(request))
    assert kept_suffix == engine.loaded.tokenizer.encode("\n", add_special_tokens=False).ids
    assert kept_prefix == full_prefix[-(40 - len(kept_suffix)) :]

    short_prefix = "x = "
    long_suffix = "".join(f"s{i} = {i}\n" for i in range(60))
    request = replace(REQUEST, prefix=short_prefix, suffix=long_suffix, max_context_tokens=40)
    full_suffix = engine.loaded.tokenizer.encode(long_suffix, add_special_tokens=False).ids
    kept_prefix, kept_suffix = _split(engine, engine.prompt_ids(request))
    assert kept_prefix == engine.loaded.tokenizer.encode(short_prefix, add_special_tokens=False).ids
    assert kept_suffix == full_suffix[: 40 - len(kept_prefix)]


def test_step_budget_scales_with_the_canvas() -> None:
    from dg_lsp.engine.engine import MIN_STEPS, steps_for_canvas
    from dg_lsp.engine.sampler import SamplerSettings

    full = SamplerSettings(max_steps=48)
    assert steps_for_canvas(full, 256, 256).max_steps == 48
    assert steps_for_canvas(full, 128, 256).max_steps == 24
    assert steps_for_canvas(full, 32, 256).max_steps == MIN_STEPS
    assert steps_for_canvas(SamplerSettings(max_steps=4), 32, 256).max_steps == 4  # never more than asked


def test_a_huge_prompt_is_cut_before_tokenising_with_the_same_ids(engine: Engine) -> None:
    line = "total = compute(values[index], weights) + offset  # running sum\n"
    prefix, suffix = line * 20_000, "\n" + line * 20_000  # ~1.3 MB each side
    request = InfillRequest(prefix=prefix, suffix=suffix, language="python", kind=HoleKind.LINE, max_context_tokens=256)
    ids = engine.prompt_ids(request)
    full_prefix = engine.loaded.tokenizer.encode(prefix, add_special_tokens=False).ids
    full_suffix = engine.loaded.tokenizer.encode(suffix, add_special_tokens=False).ids
    keep_suffix = 256 // 4 if len(full_prefix) > 256 else 256 - len(full_prefix)
    expected = encoder_ids(engine.loaded.layout, full_prefix[-(256 - keep_suffix):], full_suffix[:keep_suffix], "python")
    assert ids == expected


# --- absorbing noise (a checkpoint trained with a noise token) --------------------------------


def test_start_canvas_with_a_noise_token_is_all_that_token() -> None:
    start, _, _ = _start_canvas(CanvasSpec(length=16, noise_id=3), VOCAB, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert start.tolist() == [[3] * 16]
    seed_ids = list(range(100, 116))
    pins = [i % 2 == 0 for i in range(16)]
    spec = CanvasSpec(length=16, seed_ids=seed_ids, seed_noise=1.0, pinned=pins, noise_id=3)
    start, _, _ = _start_canvas(spec, VOCAB, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert start[0].tolist() == [seed_ids[i] if pins[i] else 3 for i in range(16)]


def _with_facts(source: Path, target: Path, facts: str) -> Path:
    shutil.copytree(source, target)
    (target / "dg_lsp.json").write_text(facts, encoding="utf-8")
    return target


def test_a_checkpoints_noise_token_reaches_every_noised_canvas_position(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    checkpoint = _with_facts(tiny_model_dir, tmp_path / "absorbing", '{"context_tokens": 256, "noise_token": "<unk>"}')
    loaded = load_model(checkpoint, "cpu", "float32")
    unk = loaded.tokenizer.token_to_id("<unk>")
    assert loaded.noise_id == unk and loaded.context_tokens == 256
    engine = Engine(loaded)
    assert engine.describe()["canvasNoise"] == "<unk>"
    seen: list[list[int]] = []
    handle = loaded.model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["decoder_input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        result = engine.infill(replace(REQUEST, settings=SamplerSettings(max_steps=4, entropy_bound=1e-9)))
    finally:
        handle.remove()
    assert len(seen) == result.steps == 4
    assert seen[0] == [unk] * len(seen[0])  # the first step sees only noise tokens
    masked = [canvas.count(unk) for canvas in seen]
    assert masked == sorted(masked, reverse=True) and masked[-1] < masked[0]  # decided at a steady rate
    for before, after in zip(seen, seen[1:]):  # a decided token is never resampled or renoised
        assert all(b == a for b, a in zip(before, after) if b != unk)
    uniform = load_model(tiny_model_dir, "cpu", "float32")
    assert uniform.noise_id is None and Engine(uniform).describe()["canvasNoise"] == "uniform"  # no noise_token


@pytest.mark.parametrize("value", ['"<no-such-token>"', "7"])
def test_an_unknown_noise_token_is_one_clear_load_error(tiny_model_dir: Path, tmp_path: Path, value: str) -> None:
    checkpoint = _with_facts(tiny_model_dir, tmp_path / "bad", '{"noise_token": ' + value + "}")
    with pytest.raises(ModelLoadError, match="noise_token .* is not a token of"):
        load_model(checkpoint, "cpu", "float32")
