"""The encoder KV cache: incremental encoding gives the same decoder output as a fresh encode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.canvas import encoder_ids
from dg_lsp.engine.prompt_cache import EncodeStats, PromptCache, common_prefix_length
from dg_lsp.model.loader import LoadedModel, load_model

CANVAS = 8


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, "cpu", "float32")


@pytest.fixture(scope="module")
def canvas() -> torch.Tensor:
    return torch.randint(0, 512, (1, CANVAS), generator=torch.Generator().manual_seed(0))


def _prompt(loaded: LoadedModel, prefix: str, suffix: str = "\n    return total\n") -> list[int]:
    tok = loaded.tokenizer
    prefix_ids = tok.encode(prefix, add_special_tokens=False).ids
    suffix_ids = tok.encode(suffix, add_special_tokens=False).ids
    return encoder_ids(loaded.layout, prefix_ids, suffix_ids, "python")


@torch.inference_mode()
def _decoder_logits(
    model: DiffusionGemmaForBlockDiffusion, cache: DynamicCache, prompt_length: int, canvas: torch.Tensor
) -> torch.Tensor:
    positions = torch.arange(prompt_length, prompt_length + canvas.shape[1])[None, :]
    return model(decoder_input_ids=canvas, past_key_values=cache, decoder_position_ids=positions).logits.float()


def _fresh_logits(loaded: LoadedModel, prompt: list[int], canvas: torch.Tensor) -> torch.Tensor:
    fresh = PromptCache(loaded.model)
    stats = fresh.encode(prompt)
    assert stats == EncodeStats(len(prompt), 0, len(prompt))
    return _decoder_logits(loaded.model, fresh.cache, len(prompt), canvas)


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5], [6]) == 0
    assert common_prefix_length([1, 2, 3], [1, 2, 3]) == 3


def test_cache_before_encode_is_an_error(loaded: LoadedModel) -> None:
    with pytest.raises(RuntimeError, match="no prompt"):
        _ = PromptCache(loaded.model).cache


def test_typing_at_the_cursor_reuses_the_common_prefix(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    first = _prompt(loaded, "def total(xs):\n    total = 0\n    for x in xs:\n        total += ")
    second = _prompt(loaded, "def total(xs):\n    total = 0\n    for x in xs:\n        total -= x * 2")
    common = common_prefix_length(first, second)
    assert 0 < common < len(first)
    cache = PromptCache(loaded.model)
    cache.encode(first)
    stats = cache.encode(second)
    assert stats == EncodeStats(prompt_tokens=len(second), reused_tokens=common, encoded_tokens=len(second) - common)
    assert cache.cache.get_seq_length() == len(second)
    incremental = _decoder_logits(loaded.model, cache.cache, len(second), canvas)
    assert torch.allclose(incremental, _fresh_logits(loaded, second, canvas), atol=1e-5)


def test_extending_the_prompt_encodes_only_the_new_tail(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    first = _prompt(loaded, "x = 1\n")
    second = first + _prompt(loaded, "y = 2\n")[1:]
    cache = PromptCache(loaded.model)
    cache.encode(first)
    stats = cache.encode(second)
    assert stats == EncodeStats(len(second), len(first), len(second) - len(first))
    incremental = _decoder_logits(loaded.model, cache.cache, len(second), canvas)
    assert torch.allclose(incremental, _fresh_logits(loaded, second, canvas), atol=1e-5)


def test_identical_prompt_encodes_nothing(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    prompt = _prompt(loaded, "class Stack:\n    def push(self, item):\n        ")
    cache = PromptCache(loaded.model)
    cache.encode(prompt)
    before = _decoder_logits(loaded.model, cache.cache, len(prompt), canvas)
    assert cache.encode(prompt) == EncodeStats(len(prompt), len(prompt), 0)
    # Running the decoder does not change the encoder cache.
    assert cache.cache.get_seq_length() == len(prompt)
    after = _decoder_logits(loaded.model, cache.cache, len(prompt), canvas)
    assert torch.allclose(before, after, atol=1e-5)


def test_shorter_prompt_crops_the_cache(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    long_prompt = _prompt(loaded, "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return ")
    short_prompt = long_prompt[:12]
    cache = PromptCache(loaded.model)
    cache.encode(long_prompt)
    stats = cache.encode(short_prompt)
    # The last token is always re-encoded so that the cache ends at the prompt's end.
    assert stats == EncodeStats(len(short_prompt), len(short_prompt) - 1, 1)
    assert cache.cache.get_seq_length() == len(short_prompt)
    cropped = _decoder_logits(loaded.model, cache.cache, len(short_prompt), canvas)
    assert torch.allclose(cropped, _fresh_logits(loaded, short_prompt, canvas), atol=1e-5)


def test_edit_far_from_the_cursor_reencodes_from_the_change(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    first = _prompt(loaded, "a = 1\n", suffix="\nprint(a)\n")
    second = _prompt(loaded, "a = 1\n", suffix="\nprint(b)\n")
    common = common_prefix_length(first, second)
    cache = PromptCache(loaded.model)
    cache.encode(first)
    stats = cache.encode(second)
    assert stats.reused_tokens == common and stats.encoded_tokens == len(second) - common
    incremental = _decoder_logits(loaded.model, cache.cache, len(second), canvas)
    assert torch.allclose(incremental, _fresh_logits(loaded, second, canvas), atol=1e-5)


def test_reuse_disabled_always_encodes_everything(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    first = _prompt(loaded, "for i in range(10):\n    ")
    second = _prompt(loaded, "for i in range(10):\n    print(")
    cache = PromptCache(loaded.model, reuse=False)
    assert cache.encode(first) == EncodeStats(len(first), 0, len(first))
    assert cache.encode(second) == EncodeStats(len(second), 0, len(second))
    assert cache.encode(second) == EncodeStats(len(second), 0, len(second))
    assert cache.encode(first) == EncodeStats(len(first), 0, len(first))
    assert cache.cache.get_seq_length() == len(first)
    logits = _decoder_logits(loaded.model, cache.cache, len(first), canvas)
    assert torch.allclose(logits, _fresh_logits(loaded, first, canvas), atol=1e-5)


def test_clear_forgets_the_prompt(loaded: LoadedModel) -> None:
    prompt = _prompt(loaded, "x = ")
    cache = PromptCache(loaded.model)
    cache.encode(prompt)
    cache.clear()
    with pytest.raises(RuntimeError):
        _ = cache.cache
    assert cache.encode(prompt) == EncodeStats(len(prompt), 0, len(prompt))


# --- a model whose sliding window is shorter than the prompt --------------------------------

WINDOW = 8


@pytest.fixture(scope="module")
def windowed() -> DiffusionGemmaForBlockDiffusion:
    from dataclasses import replace

    from dg_lsp.model.checkpoint import new_model
    from dg_lsp.model.geometry import GEOMETRIES
    from dg_lsp.testing import tiny_tokenizer

    geometry = replace(GEOMETRIES["tiny"], sliding_window=WINDOW)
    model = new_model(geometry, tiny_tokenizer(geometry.vocab_size), seed=0)
    assert "sliding_attention" in (model.config.text_config.layer_types or [])
    return model


@torch.inference_mode()
def _windowed_fresh(model: DiffusionGemmaForBlockDiffusion, prompt: list[int], canvas: torch.Tensor) -> torch.Tensor:
    """Reference logits from transformers' own path (encoder and decoder in one call, no PromptCache)."""
    positions = torch.arange(len(prompt), len(prompt) + canvas.shape[1])[None, :]
    return model(input_ids=torch.tensor([prompt]), decoder_input_ids=canvas, decoder_position_ids=positions).logits.float()


@pytest.mark.parametrize("common", [5, 20, 29])
def test_reuse_past_the_sliding_window_matches_a_fresh_encode(
    windowed: DiffusionGemmaForBlockDiffusion, canvas: torch.Tensor, common: int
) -> None:
    generator = torch.Generator().manual_seed(common)
    first = torch.randint(20, 512, (30,), generator=generator).tolist()
    second = first[:common] + torch.randint(20, 512, (7,), generator=generator).tolist()
    assert common_prefix_length(first, second) == common
    cache = PromptCache(windowed)
    cache.encode(first)
    _decoder_logits(windowed, cache.cache, len(first), canvas)  # the decoder view is built and used
    stats = cache.encode(second)
    assert stats == EncodeStats(len(second), common, len(second) - common)
    incremental = _decoder_logits(windowed, cache.cache, len(second), canvas)
    assert torch.allclose(incremental, _windowed_fresh(windowed, second, canvas), atol=1e-5)


def test_shrinking_and_regrowing_past_the_window(windowed: DiffusionGemmaForBlockDiffusion, canvas: torch.Tensor) -> None:
    prompt = torch.randint(20, 512, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    cache = PromptCache(windowed)
    for length in (40, 12, 6, 25, 40):
        cache.encode(prompt[:length])
        logits = _decoder_logits(windowed, cache.cache, length, canvas)
        assert torch.allclose(logits, _windowed_fresh(windowed, prompt[:length], canvas), atol=1e-5), length


def test_fresh_cache_matches_the_transformers_path(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    prompt = _prompt(loaded, "def add(a, b):\n    return ")
    reference = _windowed_fresh(loaded.model, prompt, canvas)
    assert torch.allclose(_fresh_logits(loaded, prompt, canvas), reference, atol=1e-5)


def test_a_replacement_encoder_never_sees_one_token_tails_or_one_state_pasts(loaded: LoadedModel, canvas: torch.Tensor) -> None:
    """What a compiled encoder is given: sizes it would specialize on (1) are avoided, the answer is the same."""
    calls: list[tuple[int, int]] = []
    encoder = loaded.model.model.encoder

    def recording(**kwargs: object) -> object:
        positions = kwargs["position_ids"]
        assert isinstance(positions, torch.Tensor)
        calls.append((int(positions[0, 0]), positions.shape[1]))  # (past states, tail tokens)
        return encoder(**kwargs)

    base = _prompt(loaded, "def total(xs):\n    total = 0\n    for x in xs:\n        total += x")
    typed = base[:-1] + [base[-1] + 1]  # the last token changed: the eager path re-encodes one token
    other_start = base[:1] + [base[1] + 1] + base[2:]  # only <bos> in common: the eager path keeps one state
    cache = PromptCache(loaded.model)
    for prompt in (base, typed, other_start):
        stats = cache.encode(prompt, encoder=recording)
        assert stats.reused_tokens + stats.encoded_tokens == len(prompt)
        incremental = _decoder_logits(loaded.model, cache.cache, len(prompt), canvas)
        assert torch.allclose(incremental, _fresh_logits(loaded, prompt, canvas), atol=1e-5)
    assert calls == [(0, len(base)), (len(base) - 2, 2), (0, len(other_start))]
