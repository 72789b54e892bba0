"""A batched decoder forward gives every canvas the logits it would get alone."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.engine.batching import batch_logits, batch_prompts
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
