"""Prompt-cache reuse past the sliding window matches a fresh stock cache exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.engine.prompt_cache import PromptCache
from dg_lsp.model.geometry import GEOMETRIES


@pytest.fixture(scope="module")
def windowed_model() -> DiffusionGemmaForBlockDiffusion:
    geometry = replace(GEOMETRIES["tiny"], sliding_window=16, num_hidden_layers=4, sliding_pattern=2)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(geometry.to_config())
    model.train(False)
    return model


def _decoder_logits(model: DiffusionGemmaForBlockDiffusion, cache: DynamicCache, prompt_length: int) -> torch.Tensor:
    canvas = torch.arange(8)[None] + 20
    positions = torch.arange(prompt_length, prompt_length + 8)[None]
    with torch.inference_mode():
        return model(decoder_input_ids=canvas, past_key_values=cache, decoder_position_ids=positions).logits


def test_reuse_beyond_the_window_equals_a_fresh_encode(windowed_model: DiffusionGemmaForBlockDiffusion) -> None:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(30, 500, (60,), generator=generator).tolist()
    cache = PromptCache(windowed_model)
    reused = []
    for length in (40, 45, 43, 60, 10, 12):  # grow, shrink, jump past and back inside the window
        stats = cache.encode(ids[:length])
        reused.append(stats.reused_tokens)
        fresh = DynamicCache(config=windowed_model.config.text_config)
        with torch.inference_mode():
            windowed_model.model.encoder(input_ids=torch.tensor([ids[:length]]), past_key_values=fresh)
        torch.testing.assert_close(
            _decoder_logits(windowed_model, cache.cache, length),
            _decoder_logits(windowed_model, fresh, length),
            atol=1e-5,
            rtol=1e-5,
        )
    assert reused == [0, 40, 42, 43, 9, 10]
