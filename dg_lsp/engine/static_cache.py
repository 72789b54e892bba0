"""A preallocated copy of the encoded prompt's KV cache, for the denoising step.

The decoder reads the prompt's keys and values every step. Here they live in per-layer
buffers allocated at a context *bucket* (a multiple of :data:`BUCKET` tokens) and grown
only when a prompt outgrows them; nothing is reallocated while typing, and only the slots
that changed since the last request are copied in (the prompt cache reuses its common
prefix the same way).

The decoder reads them in one of two ways. Padded (:meth:`StaticPromptKV.step_cache` with
a bucket, plus :meth:`StaticPromptKV.key_masks`): every request of a bucket has the same
shapes, which CUDA graphs need; the masks hide the padding (and, for sliding-window layers,
the states the window no longer covers). Exact (no bucket): views of just the prompt's
slots (a sliding layer's last ``window - 1``), no mask, the same arithmetic as the eager
path; used where shapes may vary (eager, or compiled with dynamic shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.engine.prompt_cache import cache_layers, common_prefix_length, layer_tensors
from dg_lsp.model.typing import text_config

#: Context buckets are multiples of this many tokens.
BUCKET = 256


def context_bucket(tokens: int) -> int:
    """The padded prompt length for ``tokens`` prompt tokens: the next multiple of :data:`BUCKET`."""
    return max(BUCKET, -(-tokens // BUCKET) * BUCKET)


@dataclass(frozen=True)
class LayerKV:
    """One layer's prompt keys and values, ``(1, heads, bucket, head_dim)`` views of the buffers."""

    keys: torch.Tensor
    values: torch.Tensor


class StepCache:
    """The read-only cache object the decoder's attention layers take (duck-typed like transformers' caches).

    ``is_compileable`` is False, so each attention layer appends its canvas states to these
    fixed-size prompt states with one concatenation, never touching the buffers.
    """

    is_compileable = False

    def __init__(self, layers: Sequence[LayerKV]) -> None:
        self.layers = list(layers)


class StaticPromptKV:
    """Per-layer prompt KV buffers of a fixed bucket size, filled from a :class:`PromptCache`'s full cache."""

    def __init__(self, model: DiffusionGemmaForBlockDiffusion) -> None:
        config = text_config(model)
        self._layer_types: list[str] = list(config.layer_types or [])
        self._window = int(config.sliding_window or 0)
        self._device = model.device
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._ids: list[int] = []
        self.capacity = 0
        #: Bumped whenever the buffers are replaced (anything that reads them in place must be rebuilt).
        self.generation = 0

    @property
    def length(self) -> int:
        """Prompt tokens held."""
        return len(self._ids)

    def clear(self) -> None:
        """Forget the held prompt (the buffers stay allocated)."""
        self._ids = []

    def _allocate(self, cache: DynamicCache, capacity: int) -> None:
        keys, values = [], []
        for layer in cache_layers(cache):
            k, v = layer_tensors(layer)
            keys.append(k.new_zeros((k.shape[0], k.shape[1], capacity, k.shape[3])))
            values.append(v.new_zeros((v.shape[0], v.shape[1], capacity, v.shape[3])))
        if self._device.type == "cuda":  # fixed addresses: CUDA graphs read them in place
            for tensor in (*keys, *values):
                torch._dynamo.mark_static_address(tensor)
        self._keys, self._values, self.capacity, self._ids = keys, values, capacity, []
        self.generation += 1

    @torch.inference_mode()
    def sync(self, cache: DynamicCache, prompt_ids: Sequence[int], unchanged: int | None = None) -> int:
        """Hold ``prompt_ids``, whose states ``cache`` holds in full; returns how many slots were copied.

        ``cache`` must hold every state of the prompt (sliding layers included: a prompt
        cache records their whole past). Only the slots after the common prefix with the
        previous prompt are copied, and none of the last ``len - unchanged`` (states the
        prompt cache recomputed, which may differ in rounding).
        """
        n = len(prompt_ids)
        if n > self.capacity or not self._keys:
            self._allocate(cache, context_bucket(n))
        keep = common_prefix_length(self._ids, prompt_ids)
        if unchanged is not None:
            keep = min(keep, unchanged)
        self._ids = []  # invalid until every layer is copied
        for index, layer in enumerate(cache_layers(cache)):
            k, v = layer_tensors(layer)
            if k.shape[-2] != n:
                raise ValueError(f"layer {index} holds {k.shape[-2]} states for a {n}-token prompt")
            self._keys[index][..., keep:n, :].copy_(k[..., keep:n, :])
            self._values[index][..., keep:n, :].copy_(v[..., keep:n, :])
        self._ids = list(prompt_ids)
        return n - keep

    def step_cache(self, bucket: int | None = None) -> StepCache:
        """The decoder's view: the first ``bucket`` slots of every layer, or (None) exactly the prompt's states."""
        if bucket is None:
            n = self.length
            views = []
            for layer_type, k, v in zip(self._layer_types, self._keys, self._values, strict=True):
                first = max(0, n - (self._window - 1)) if layer_type == "sliding_attention" and self._window > 0 else 0
                views.append(LayerKV(k[..., first:n, :], v[..., first:n, :]))
            return StepCache(views)
        if bucket > self.capacity or bucket < self.length:
            raise ValueError(f"bucket {bucket} cannot hold a {self.length}-token prompt in {self.capacity} slots")
        return StepCache(
            [LayerKV(k[..., :bucket, :], v[..., :bucket, :]) for k, v in zip(self._keys, self._values, strict=True)]
        )

    def key_masks(self, bucket: int, canvas: int) -> dict[str, torch.Tensor]:
        """``(1, bucket + canvas)`` bool masks per layer type: true for the keys a canvas token may attend to."""
        n = self.length
        masks: dict[str, torch.Tensor] = {}
        for layer_type in set(self._layer_types):
            mask = torch.zeros((1, bucket + canvas), dtype=torch.bool, device=self._device)
            first = max(0, n - (self._window - 1)) if layer_type == "sliding_attention" and self._window > 0 else 0
            mask[:, first:n] = True
            mask[:, bucket:] = True
            masks[layer_type] = mask
        return masks


def attention_masks(
    key_masks: dict[str, torch.Tensor], queries: int, implementation: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """4-D masks ``(1, 1, queries, keys)`` in the form the model's attention kernel takes (bool, or additive for eager)."""
    out: dict[str, torch.Tensor] = {}
    for layer_type, keys in key_masks.items():
        mask = keys[:, None, None, :].expand(-1, 1, queries, -1)
        if implementation == "eager":
            out[layer_type] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        else:
            out[layer_type] = mask.contiguous()
        # (contiguous: compiled kernels and CUDA graphs want a real tensor, not a stride-0 view)
    return out
