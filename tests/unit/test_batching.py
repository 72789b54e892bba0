"""A batched decoder forward gives every canvas the logits it would get alone."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.engine.batched_cache import BatchedStaticKV
from dg_lsp.engine.batching import SlotLayout, batch_logits, batch_prompts, slot_layout, slot_logits
from dg_lsp.engine.denoiser import CanvasRow, CanvasSpec, embedding_dtype, row_logits
from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.engine.sampler import SamplerSettings
from dg_lsp.model.geometry import GEOMETRIES
from dg_lsp.model.typing import vocab_size


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def windowed_model(request: pytest.FixtureRequest) -> DiffusionGemmaForBlockDiffusion:
    geometry = replace(GEOMETRIES["tiny"], sliding_window=16, num_hidden_layers=4, sliding_pattern=2)
    config = geometry.to_config()
    config._attn_implementation = request.param
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(config)
    model.train(False)
    return model


def _rows(model: DiffusionGemmaForBlockDiffusion, shapes: list[tuple[int, int]]) -> tuple[list[CanvasRow], list[PromptCache]]:
    generator = torch.Generator().manual_seed(1)
    rows, caches = [], []
    for prompt_length, canvas in shapes:
        cache = PromptCache(model)
        cache.encode(torch.randint(30, 500, (prompt_length,), generator=generator).tolist())
        caches.append(cache)  # keeps the cache alive while its view is in use
        rows.append(CanvasRow.start(model, cache.cache, prompt_length, CanvasSpec(length=canvas), SamplerSettings(max_steps=6), seed=prompt_length))
    return rows, caches


def test_batched_logits_equal_single_logits(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    # Prompts inside and well past the 16-token window; canvases of three lengths.
    rows, _ = _rows(windowed_model, [(5, 32), (12, 16), (40, 32), (90, 8)])
    vocab, dtype = vocab_size(windowed_model), embedding_dtype(windowed_model)
    prompts = None
    for step in range(3):
        single = [row_logits(windowed_model, row) for row in rows]
        batched, prompts = batch_logits(windowed_model, rows, prompts)
        for alone, together, row in zip(single, batched, rows, strict=True):
            assert together.shape == (1, row.spec.length, vocab)
            torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        for index, (row, logits) in enumerate(zip(rows, single, strict=True)):
            if step > 0 or index % 2 == 0:  # first step: some rows self-conditioned, some not
                row.advance(logits, vocab, dtype, time.perf_counter())


def test_stacking_is_reused_until_the_rows_change(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    rows, _ = _rows(windowed_model, [(5, 8), (20, 8), (33, 16)])
    _, first = batch_logits(windowed_model, rows)
    _, again = batch_logits(windowed_model, rows, first)
    assert again is first
    _, fewer = batch_logits(windowed_model, rows[:2], first)
    assert fewer is not first and fewer is not None and len(fewer.rows) == 2


def test_padded_keys_are_masked(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    rows, _ = _rows(windowed_model, [(3, 8), (30, 16)])
    prompts = batch_prompts(windowed_model, rows)
    full = prompts.masks["full_attention"]
    assert full.shape[:3] == (2, 1, 16)
    keys = full[:, 0, 0] if full.dtype == torch.bool else full[:, 0, 0] == 0
    # Row 0: 27 left pads, 3 prompt keys, 8 canvas keys, 8 canvas pads.
    assert keys[0].tolist() == [False] * 27 + [True] * 11 + [False] * 8
    assert keys[1].tolist() == [True] * 46
    sliding = prompts.masks["sliding_attention"]
    visible = sliding[:, 0, 0] if sliding.dtype == torch.bool else sliding[:, 0, 0] == 0
    assert visible[0].tolist() == [False] * 12 + [True] * 11 + [False] * 8  # window - 1 = 15 slots
    assert prompts.positions[0].tolist() == list(range(3, 19))


# -- the slotted static cache (what the engine server uses) ---------------------------------------


class _Request:
    """A request alone (its own prompt cache and row) and its place in a slot cache."""

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, prompt: list[int], canvas: int, seed: int) -> None:
        self.prompts = PromptCache(model)
        self.prompts.encode(prompt)
        settings = SamplerSettings(max_steps=6)
        # Two rows with the same seed: one reads its own cache, one reads the slot.
        self.alone = CanvasRow.start(model, self.prompts.cache, len(prompt), CanvasSpec(length=canvas), settings, seed)
        self.row = CanvasRow.start(model, None, len(prompt), CanvasSpec(length=canvas), settings, seed)
        self.slot = -1


def _join(model: DiffusionGemmaForBlockDiffusion, kv: BatchedStaticKV, prompt: list[int], canvas: int, seed: int, fixed: bool) -> _Request:
    request = _Request(model, prompt, canvas, seed)
    request.slot = kv.choose(prompt, anywhere=fixed)
    kv.fill(request.slot, request.prompts, [])
    return request


def _step_and_compare(model: DiffusionGemmaForBlockDiffusion, kv: BatchedStaticKV, requests: list[_Request], layout: SlotLayout | None, fixed: bool) -> SlotLayout:
    members = [(r.slot, r.row) for r in requests]
    batched, layout = slot_logits(model, kv, members, layout, fixed)
    vocab, dtype = vocab_size(model), embedding_dtype(model)
    for request, together in zip(requests, batched, strict=True):
        alone = row_logits(model, request.alone)
        assert together.shape == alone.shape
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        # Both rows advance on the logits computed alone, so they stay identical.
        now = time.perf_counter()
        request.alone.advance(alone, vocab, dtype, now)
        request.row.advance(alone, vocab, dtype, now)
    return layout


def _prompt(generator: torch.Generator, length: int) -> list[int]:
    ids: list[int] = torch.randint(30, 500, (length,), generator=generator).tolist()
    return ids


@pytest.mark.parametrize("fixed", [False, True], ids=["exact", "fixed-shapes"])
def test_slot_logits_equal_single_logits_through_joins_and_leaves(windowed_model: DiffusionGemmaForBlockDiffusion, fixed: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    kv = BatchedStaticKV(windowed_model, slots=5, context_tokens=64)
    # Prompts inside and well past the 16-token window; canvases of three lengths.
    requests = [_join(windowed_model, kv, _prompt(generator, n), c, seed=n, fixed=fixed) for n, c in [(5, 32), (12, 16), (40, 32), (90, 8)]]
    assert [r.slot for r in requests] == [0, 1, 2, 3]
    layout = None
    for _ in range(2):
        layout = _step_and_compare(windowed_model, kv, requests, layout, fixed)
    # One leaves mid-denoise: its slot is freed, the others' states stay where they are.
    buffers = [(t.data_ptr(), t.clone()) for t in (*kv._keys, *kv._values)]
    gone = requests.pop(1)
    kv.release(gone.slot)
    layout = _step_and_compare(windowed_model, kv, requests, layout, fixed)
    assert layout.rows == (5 if fixed else 4)  # slot 1 is filler now (exact shapes end at slot 3)
    # One joins mid-denoise: it takes the hole (a slot reused), with a prompt longer than the last one there.
    joined = _join(windowed_model, kv, _prompt(generator, 70), 16, seed=7, fixed=fixed)
    assert joined.slot == 1
    requests.append(joined)
    for (pointer, before), after in zip(buffers, (*kv._keys, *kv._values), strict=True):
        assert after.data_ptr() == pointer  # nothing reallocated
        for other in (0, 2, 3):
            assert torch.equal(after[other], before[other])  # nor moved
    for _ in range(2):
        layout = _step_and_compare(windowed_model, kv, requests, layout, fixed)
    # Everyone but the last slot leaves: the forward shrinks to it (filler below it in exact mode too).
    for request in requests[:-1]:
        kv.release(request.slot)
    requests = requests[-1:]
    layout = _step_and_compare(windowed_model, kv, requests, layout, fixed)


def test_a_lone_slot_reads_exact_views_with_no_mask(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    generator = torch.Generator().manual_seed(4)
    kv = BatchedStaticKV(windowed_model, slots=4, context_tokens=16)
    request = _join(windowed_model, kv, _prompt(generator, 30), 16, seed=1, fixed=False)
    layout = _step_and_compare(windowed_model, kv, [request], None, fixed=False)
    assert layout.masks is None and layout.rows == 1
    assert [layer.keys.shape[2] for layer in layout.cache.layers] == [15, 30, 15, 30]  # window - 1 on sliding layers


def test_slot_masks_hide_padding_and_filler(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    generator = torch.Generator().manual_seed(5)
    kv = BatchedStaticKV(windowed_model, slots=3, context_tokens=16)
    first = _join(windowed_model, kv, _prompt(generator, 3), 8, seed=1, fixed=False)
    second = _join(windowed_model, kv, _prompt(generator, 30), 16, seed=2, fixed=False)
    kv.release(first.slot)
    third = _join(windowed_model, kv, _prompt(generator, 4), 8, seed=3, fixed=False)
    assert third.slot == 0  # the hole, not a new gap
    kv.release(third.slot)
    layout = slot_layout(windowed_model, kv, [(second.slot, second.row)])
    assert layout.rows == 2 and layout.masks is not None
    full = layout.masks["full_attention"]
    keys = full[:, 0, 0] if full.dtype == torch.bool else full[:, 0, 0] == 0
    assert keys[0].tolist() == [False] * 30 + [True] * 16  # filler: its own canvas only
    assert keys[1].tolist() == [True] * 46
    sliding = layout.masks["sliding_attention"]
    visible = sliding[:, 0, 0] if sliding.dtype == torch.bool else sliding[:, 0, 0] == 0
    assert visible[1].tolist() == [True] * 15 + [True] * 16
    assert layout.positions[1].tolist() == list(range(30, 46))


def test_typing_on_copies_only_the_changed_tail(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    generator = torch.Generator().manual_seed(6)
    kv = BatchedStaticKV(windowed_model, slots=4, context_tokens=16)
    other = _join(windowed_model, kv, _prompt(generator, 20), 8, seed=1, fixed=False)
    third = _join(windowed_model, kv, _prompt(generator, 9), 8, seed=3, fixed=False)
    prompt = _prompt(generator, 12)
    typing = _Request(windowed_model, prompt, 16, seed=2)
    typing.slot = kv.choose(prompt)
    first = kv.fill(typing.slot, typing.prompts, [])
    assert first.tokens == 12 and typing.slot == 2
    kv.release(typing.slot)
    kv.release(third.slot)
    # The same user types two characters: the same prompt cache re-encodes the tail, the slot keeps the rest.
    previous = typing.prompts.ids
    longer = prompt + [77, 78]
    typing.prompts.encode(longer)
    assert kv.choose(longer) == 1  # exact shapes: never open a gap (slot 1 would be filler)
    assert kv.choose(longer, anywhere=True) == 2  # fixed shapes: the slot holding its prefix
    copy = kv.fill(2, typing.prompts, previous)
    assert copy.tokens == 2  # just the two new tokens
    settings = SamplerSettings(max_steps=6)
    typing.alone = CanvasRow.start(windowed_model, typing.prompts.cache, len(longer), CanvasSpec(length=16), settings, 2)
    typing.row = CanvasRow.start(windowed_model, None, len(longer), CanvasSpec(length=16), settings, 2)
    typing.slot = 2
    for _ in range(2):
        _step_and_compare(windowed_model, kv, [other, typing], None, fixed=False)
    # Past the window, sliding layers hold the window's states: a moved window is copied whole (15 states).
    past = longer + _prompt(generator, 10)
    previous = typing.prompts.ids
    kv.release(2)
    typing.prompts.encode(past)
    assert kv.fill(2, typing.prompts, previous).tokens == 15
    # States from another prompt cache are never mixed in, even with the same prefix.
    kv.release(2)
    stranger = PromptCache(windowed_model)
    stranger.encode(past)
    assert kv.fill(2, stranger, []).tokens == len(past)


def test_a_prompt_past_the_capacity_grows_every_slot_once(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    generator = torch.Generator().manual_seed(8)
    kv = BatchedStaticKV(windowed_model, slots=3, context_tokens=16)
    assert kv.capacity == 256
    small = _join(windowed_model, kv, _prompt(generator, 10), 8, seed=1, fixed=False)
    big = _Request(windowed_model, _prompt(generator, 300), 8, seed=2)
    big.slot = kv.choose(big.prompts.ids)
    assert kv.fill(big.slot, big.prompts, []).grew
    assert kv.capacity == 512
    layout = None
    for _ in range(2):
        layout = _step_and_compare(windowed_model, kv, [small, big], layout, fixed=False)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["join", "leave", "step"]), st.integers(1, 60), st.sampled_from([8, 16, 32])),
        min_size=4,
        max_size=14,
    ),
    fixed=st.booleans(),
)
def test_any_join_leave_sequence_keeps_every_row_as_alone(
    windowed_model: DiffusionGemmaForBlockDiffusion, script: list[tuple[str, int, int]], fixed: bool
) -> None:
    generator = torch.Generator().manual_seed(9)
    kv = BatchedStaticKV(windowed_model, slots=4, context_tokens=32)
    active: list[_Request] = []
    layout = None
    for index, (op, length, canvas) in enumerate(script):
        if op == "join" and len(active) < kv.slots:
            active.append(_join(windowed_model, kv, _prompt(generator, length), canvas, seed=index, fixed=fixed))
        elif op == "leave" and active:
            gone = active.pop(length % len(active))
            kv.release(gone.slot)
        if active:
            layout = _step_and_compare(windowed_model, kv, active, layout, fixed)
            for finished in [r for r in active if r.alone.step >= 6]:
                kv.release(finished.slot)
                active.remove(finished)


def test_a_layout_serves_the_same_rows_only(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    # A finished row's id may be reused by the next row in its slot: layouts compare the rows themselves.
    generator = torch.Generator().manual_seed(10)
    kv = BatchedStaticKV(windowed_model, slots=2, context_tokens=16)
    first = _join(windowed_model, kv, _prompt(generator, 12), 8, seed=1, fixed=False)
    layout = slot_layout(windowed_model, kv, [(first.slot, first.row)])
    assert layout.serves([(0, first.row)])
    kv.release(first.slot)
    second = _join(windowed_model, kv, _prompt(generator, 20), 8, seed=1, fixed=False)
    assert second.slot == 0
    assert not layout.serves([(0, second.row)])
    assert not layout.serves([(1, first.row)]) and not layout.serves([])


def test_moving_a_slot_down_keeps_its_answers(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    generator = torch.Generator().manual_seed(11)
    kv = BatchedStaticKV(windowed_model, slots=3, context_tokens=16)
    requests = [_join(windowed_model, kv, _prompt(generator, n), 16, seed=n, fixed=False) for n in (40, 7, 25)]
    layout = _step_and_compare(windowed_model, kv, requests, None, fixed=False)
    gone = requests.pop(0)
    kv.release(gone.slot)
    assert kv.move(2, 0) > 0 and kv.in_use == [0, 1]
    requests[1].slot = 0
    layout = _step_and_compare(windowed_model, kv, requests, layout, fixed=False)
    assert layout.rows == 2 and layout.masks is not None
