"""Encoder KV cache kept between requests: only the changed tail of the prompt is re-encoded.

The canvas layout puts the suffix first and the prefix last, so typing at the cursor changes
only the end of the encoder sequence. The cache remembers the ids it holds; a new prompt
reuses the longest common prefix (cropping the rest) and encodes just the new tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.model.typing import text_config


@dataclass(frozen=True)
class EncodeStats:
    """How a prompt was encoded."""

    prompt_tokens: int
    reused_tokens: int
    encoded_tokens: int


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """One encoder KV cache for the resident model, reused across requests."""

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, reuse: bool = True) -> None:
        self._model = model
        self._reuse = reuse
        self._ids: list[int] = []
        self._cache: DynamicCache | None = None
        config = text_config(model)
        self._window = int(config.sliding_window)
        self._has_sliding = "sliding_attention" in (config.layer_types or [])

    @property
    def cache(self) -> DynamicCache:
        """The cache holding the last encoded prompt."""
        if self._cache is None:
            raise RuntimeError("no prompt has been encoded yet")
        return self._cache

    def clear(self) -> None:
        """Forget everything (e.g. after a model swap or an interrupted encode)."""
        self._ids = []
        self._cache = None

    def _reusable(self, keep: int) -> bool:
        # A sliding-window layer that has dropped old states cannot be rolled back.
        return self._reuse and self._cache is not None and not (self._has_sliding and len(self._ids) >= self._window)

    @torch.inference_mode()
    def encode(self, prompt_ids: Sequence[int]) -> EncodeStats:
        """Make the cache hold exactly ``prompt_ids``, encoding as little as possible."""
        keep = common_prefix_length(self._ids, prompt_ids)
        if keep == len(prompt_ids) == len(self._ids) and self._cache is not None:
            return EncodeStats(len(prompt_ids), keep, 0)
        # Re-encode at least the last token: the decoder needs the cache to end at the prompt's end.
        keep = min(keep, len(prompt_ids) - 1)
        if keep > 0 and self._reusable(keep):
            assert self._cache is not None
            self._cache.crop(keep - len(self._ids))
        else:
            keep = 0
            self._cache = DynamicCache(config=text_config(self._model))
        tail = torch.tensor([list(prompt_ids[keep:])], dtype=torch.long, device=self._model.device)
        positions = torch.arange(keep, len(prompt_ids), device=self._model.device)[None, :]
        self._ids = []  # invalid until the encode below completes
        self._model.model.encoder(input_ids=tail, past_key_values=self._cache, position_ids=positions)
        self._ids = list(prompt_ids)
        return EncodeStats(len(prompt_ids), keep, len(prompt_ids) - keep)
