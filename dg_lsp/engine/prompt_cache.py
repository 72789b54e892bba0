"""Encoder KV cache kept between requests: only the changed tail of the prompt is re-encoded.

The canvas layout puts the suffix first and the prefix last, so typing at the cursor changes
only the end of the encoder sequence. The cache remembers the ids it holds; a new prompt
reuses the longest common prefix (cropping the rest) and encodes just the new tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from dg_lsp.model.typing import text_config


@dataclass(frozen=True)
class EncodeStats:
    """How a prompt was encoded."""

    prompt_tokens: int
    reused_tokens: int
    encoded_tokens: int


@dataclass
class EncodeTotals:
    """What the prompt cache has encoded and reused, over all requests (``dg.info``'s ``promptCache``)."""

    prompts: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    encoded_tokens: int = 0
    last: EncodeStats | None = None

    def add(self, stats: EncodeStats) -> None:
        """Count one encode."""
        self.prompts += 1
        self.prompt_tokens += stats.prompt_tokens
        self.reused_tokens += stats.reused_tokens
        self.encoded_tokens += stats.encoded_tokens
        self.last = stats

    def to_json(self) -> dict[str, Any]:
        """The totals and the last encode, camelCase."""
        last = self.last
        return {
            "prompts": self.prompts,
            "promptTokens": self.prompt_tokens,
            "reusedTokens": self.reused_tokens,
            "encodedTokens": self.encoded_tokens,
            "last": None
            if last is None
            else {"promptTokens": last.prompt_tokens, "reusedTokens": last.reused_tokens, "encodedTokens": last.encoded_tokens},
        }


def cache_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The layers of a dynamic cache, typed as such."""
    return [cast(DynamicLayer, layer) for layer in cache.layers]


def layer_tensors(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """A filled layer's keys and values."""
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _length(layer: DynamicLayer) -> int:
    return int(layer.keys.shape[-2]) if layer.keys is not None else 0


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """One encoder KV cache for the resident model, reused across requests.

    Sliding-window layers record their whole past (``activate_past_recording``) so the cache
    can be cut back to any common prefix; the decoder gets a view in which those layers
    show only the last ``sliding_window - 1`` states, exactly what a fresh cache would hold.
    """

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, reuse: bool = True) -> None:
        self._model = model
        self._reuse = reuse
        self._ids: list[int] = []
        self._cache: DynamicCache | None = None
        self._view: DynamicCache | None = None
        self._reused = 0
        self._config = text_config(model)
        self._window = int(self._config.sliding_window)

    @property
    def cache(self) -> DynamicCache:
        """The decoder's read-only view of the last encoded prompt."""
        if self._cache is None:
            raise RuntimeError("no prompt has been encoded yet")
        if self._view is None:
            self._view = self._decoder_view(self._cache)
        return self._view

    @property
    def full_cache(self) -> DynamicCache:
        """Every state of the last encoded prompt (sliding-window layers included, unwindowed)."""
        if self._cache is None:
            raise RuntimeError("no prompt has been encoded yet")
        return self._cache

    @property
    def reused_tokens(self) -> int:
        """Leading tokens whose states the last :meth:`encode` kept rather than recomputed."""
        return self._reused

    @property
    def ids(self) -> list[int]:
        """The prompt ids the cache holds (empty when it holds none)."""
        return list(self._ids)

    def clear(self) -> None:
        """Forget everything (e.g. after a model swap or an interrupted encode)."""
        self._ids = []
        self._cache = None
        self._view = None
        self._reused = 0

    def _new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self._config)
        for layer in cache_layers(cache):
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.activate_past_recording()  # type: ignore[no-untyped-call]
        return cache

    def _decoder_view(self, cache: DynamicCache) -> DynamicCache:
        keep = self._window - 1
        layers = cache_layers(cache)
        if not any(isinstance(l, DynamicSlidingWindowLayer) and _length(l) > keep for l in layers):
            return cache
        view = DynamicCache(config=self._config)
        for mine, theirs in zip(cache_layers(view), layers, strict=True):
            keys, values = layer_tensors(theirs)
            if isinstance(theirs, DynamicSlidingWindowLayer):
                keys, values = keys[..., -keep:, :], values[..., -keep:, :]
                if isinstance(mine, DynamicSlidingWindowLayer):
                    mine.cumulative_length = theirs.cumulative_length
            mine.lazy_initialization(keys, values)
            mine.keys, mine.values = keys, values
        return view

    def _crop(self, cache: DynamicCache, keep: int, contiguous: bool = False) -> None:
        """Cut every layer back to ``keep`` states (``contiguous``: as fresh dense copies, one stride layout for a compiled encoder)."""
        for layer in cache_layers(cache):
            if not layer.is_initialized:
                continue
            keys, values = layer_tensors(layer)
            keys, values = keys[..., :keep, :], values[..., :keep, :]
            if contiguous:  # dense standard strides, also on size-1 dims (a compiled graph guards on them)
                keys = keys.clone(memory_format=torch.contiguous_format)
                values = values.clone(memory_format=torch.contiguous_format)
            layer.keys, layer.values = keys, values
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length = keep

    @torch.inference_mode()
    def encode(self, prompt_ids: Sequence[int], encoder: Callable[..., Any] | None = None) -> EncodeStats:
        """Make the cache hold exactly ``prompt_ids``, encoding as little as possible.

        ``encoder`` replaces the model's encoder module (a compiled one with symbolic sizes,
        :class:`~dg_lsp.engine.compiled_step.StepFunctions`): it then never gets a tail of one
        token or a past of one state, sizes a compiled graph specializes on, so one graph for
        a fresh prompt and one for a reused prefix serve every request.
        """
        keep = common_prefix_length(self._ids, prompt_ids)
        if self._reuse and keep == len(prompt_ids) == len(self._ids) and self._cache is not None:
            self._reused = keep
            return EncodeStats(len(prompt_ids), keep, 0)
        # Re-encode at least the last token: the decoder needs the cache to end at the prompt's end.
        keep = min(keep, len(prompt_ids) - (1 if encoder is None else 2))
        if encoder is not None and keep == 1:
            keep = 0
        if keep > 0 and self._reuse and self._cache is not None:
            cache = self._cache
            self._crop(cache, keep, contiguous=encoder is not None)
        else:
            keep = 0
            cache = self._new_cache()
        self._cache, self._view, self._ids = cache, None, []  # invalid until the encode completes
        tail = torch.tensor([list(prompt_ids[keep:])], dtype=torch.long, device=self._model.device)
        positions = torch.arange(keep, len(prompt_ids), device=self._model.device)[None, :]
        run = self._model.model.encoder if encoder is None else encoder
        run(input_ids=tail, past_key_values=cache, position_ids=positions)
        self._ids, self._reused = list(prompt_ids), keep
        return EncodeStats(len(prompt_ids), keep, len(prompt_ids) - keep)
