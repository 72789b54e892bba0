"""A preallocated, slotted KV cache for the engine server's batched denoising.

Each layer has one buffer ``(slots, kv_heads, width, head_dim)``: ``width`` is the context
capacity for full-attention layers and ``min(capacity, sliding_window - 1)`` for sliding
ones (a canvas sees at most the last ``window - 1`` prompt states there). A request being
denoised owns one *slot* (one batch row) for its whole life: when it joins, only its own
prompt's states are copied into its slot (and only the part after the prefix the slot
already held from the same prompt cache, so a user typing on copies just the changed tail);
when it leaves, the slot is marked free and the others stay where they are. A batched
forward reads views of the buffers, never copies of them: the rows ``[0, rows)`` (every slot
for fixed shapes, else up to the highest slot in use) and the first ``context`` states, each
slot's states stored from position 0 and its padding hidden by a per-row key mask. Without
fixed shapes a free slot under the highest busy one would be computed as a masked filler row
every step, so the scheduler moves the request in the highest slot down into it
(:meth:`BatchedStaticKV.move`: one prompt copied, once).

Only a prompt longer than the capacity reallocates (every slot copied once, to the next
:data:`~dg_lsp.engine.static_cache.BUCKET` multiple).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass


import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_lsp.engine.prompt_cache import PromptCache, cache_layers, common_prefix_length, layer_tensors
from dg_lsp.engine.static_cache import LayerKV, StepCache, context_bucket
from dg_lsp.model.typing import text_config


@dataclass
class SlotCopy:
    """What filling one slot cost."""

    slot: int
    #: Prompt positions whose states were copied (per layer; sliding layers at most ``window - 1``).
    tokens: int
    #: Bytes copied over all layers (keys and values).
    bytes: int
    #: Whether the buffers had to grow (every slot copied once).
    grew: bool = False


class BatchedStaticKV:
    """``slots`` batch rows of per-layer prompt KV buffers; a request holds one row while it is denoised."""

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, slots: int, context_tokens: int) -> None:
        config = text_config(model)
        self.slots = max(1, slots)
        self.layer_types: list[str] = list(config.layer_types or [])
        self._window = int(config.sliding_window or 0)
        self._device = model.device
        #: Context capacity of the full-attention buffers (a bucket multiple).
        self.capacity = context_bucket(max(1, context_tokens))
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        #: Prompt ids each slot holds (kept after the slot is freed, for reuse by the next request).
        self._ids: list[list[int]] = [[] for _ in range(self.slots)]
        self._busy = [False] * self.slots
        #: The prompt cache each slot's states were copied from.
        self._sources: list[weakref.ref[PromptCache] | None] = [None] * self.slots

    # -- geometry ------------------------------------------------------------------------------
    def sliding(self, layer: int) -> bool:
        """Whether ``layer`` is a sliding-window layer with a window to honour."""
        return self.layer_types[layer] == "sliding_attention" and self._window > 0

    def visible(self, layer_type: str, prompt_length: int) -> int:
        """Prompt states a canvas sees in a layer of ``layer_type`` (stored from position 0 of its slot)."""
        if layer_type == "sliding_attention" and self._window > 0:
            return min(prompt_length, self._window - 1)
        return prompt_length

    def width(self, layer_type: str, context: int) -> int:
        """Buffer positions a forward reads for ``context`` prompt positions."""
        return self.visible(layer_type, context)

    @property
    def allocated(self) -> bool:
        """Whether the buffers exist (they are shaped from the first prompt cache seen)."""
        return bool(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return sum(t.numel() * t.element_size() for t in (*self._keys, *self._values))

    def _allocate(self, cache: DynamicCache, capacity: int) -> None:
        old_keys, old_values = self._keys, self._values
        keys, values = [], []
        for index, layer in enumerate(cache_layers(cache)):
            k, v = layer_tensors(layer)
            width = min(capacity, self._window - 1) if self.sliding(index) else capacity
            keys.append(k.new_zeros((self.slots, k.shape[1], width, k.shape[3])))
            values.append(v.new_zeros((self.slots, v.shape[1], width, v.shape[3])))
        for new, old in zip((*keys, *values), (*old_keys, *old_values)):  # growing: keep every slot's states
            kept = min(new.shape[2], old.shape[2])
            new[:, :, :kept].copy_(old[:, :, :kept])
        if self._device.type == "cuda":  # fixed addresses, as CUDA graphs want
            for tensor in (*keys, *values):
                torch._dynamo.mark_static_address(tensor)
        self._keys, self._values, self.capacity = keys, values, capacity

    # -- slots -----------------------------------------------------------------------------
    def busy(self, slot: int) -> bool:
        """Whether ``slot`` belongs to a request."""
        return self._busy[slot]

    @property
    def in_use(self) -> list[int]:
        """Slots held by requests, ascending."""
        return [slot for slot, busy in enumerate(self._busy) if busy]

    def choose(self, prompt: Sequence[int], anywhere: bool = False) -> int:
        """The free slot for ``prompt``, preferring one that already holds the longest prefix of it.

        Unless ``anywhere`` (every row is computed anyway, as with fixed shapes), only slots
        that open no gap are considered: holes under the highest busy slot and the one above it.
        """
        free = [slot for slot, busy in enumerate(self._busy) if not busy]
        if not free:
            raise RuntimeError(f"all {self.slots} slots are busy")
        top = max(self.in_use, default=-1)
        candidates = free if anywhere else [slot for slot in free if slot <= top + 1]
        return max(candidates, key=lambda slot: (common_prefix_length(self._ids[slot], prompt), -slot))

    @torch.inference_mode()
    def fill(self, slot: int, prompts: PromptCache, previous: Sequence[int]) -> SlotCopy:
        """Take ``slot`` for the prompt ``prompts`` just encoded; ``previous`` is what it held before.

        The slot keeps the states it already holds only when they are this same prompt
        cache's states from before that encode (so the bits are exactly the ones a request
        alone would see): the positions the encode reused. Everything after them is copied;
        for a sliding layer whose window moved, its whole ``window - 1`` states.
        """
        if self._busy[slot]:
            raise RuntimeError(f"slot {slot} is busy")
        prompt, cache = prompts.ids, prompts.full_cache
        n = len(prompt)
        grew = False
        if not self._keys or n > self.capacity:
            grew = bool(self._keys)
            self._allocate(cache, max(self.capacity, context_bucket(n)))
        source = self._sources[slot]
        same = source is not None and source() is prompts and self._ids[slot] == list(previous)
        keep = min(common_prefix_length(self._ids[slot], prompt), prompts.reused_tokens) if same else 0
        held = len(self._ids[slot])
        self._ids[slot], self._sources[slot] = [], None  # invalid until every layer is copied
        copied_bytes, copied_tokens = 0, 0
        for index, layer in enumerate(cache_layers(cache)):
            k, v = layer_tensors(layer)
            if k.shape[-2] != n:
                raise ValueError(f"layer {index} holds {k.shape[-2]} states for a {n}-token prompt")
            # Prompt position j lives at slot position j - first (sliding layers keep the window's states).
            first, first_held = self._first(index, n), self._first(index, held)
            start = max(keep, first) if first == first_held else first
            src_k, src_v = k[0, :, start:n], v[0, :, start:n]
            self._keys[index][slot, :, start - first : n - first].copy_(src_k)
            self._values[index][slot, :, start - first : n - first].copy_(src_v)
            copied_bytes += 2 * src_k.numel() * src_k.element_size()
            copied_tokens = max(copied_tokens, n - start)
        self._ids[slot], self._sources[slot] = list(prompt), weakref.ref(prompts)
        self._busy[slot] = True
        return SlotCopy(slot=slot, tokens=copied_tokens, bytes=copied_bytes, grew=grew)

    def _first(self, layer: int, prompt_length: int) -> int:
        """First prompt position layer ``layer`` keeps for a ``prompt_length``-token prompt."""
        return max(0, prompt_length - (self._window - 1)) if self.sliding(layer) else 0

    @torch.inference_mode()
    def move(self, source: int, target: int) -> int:
        """Move the busy ``source`` slot's prompt into the free ``target`` slot (its visible states only); returns bytes copied.

        Used to close a gap under the last busy slot when forwards compute every row up to it.
        """
        if not self._busy[source] or self._busy[target]:
            raise RuntimeError(f"cannot move slot {source} to slot {target}")
        n = len(self._ids[source])
        copied = 0
        for index, (k, v) in enumerate(zip(self._keys, self._values, strict=True)):
            width = self.visible(self.layer_types[index], n)
            k[target, :, :width].copy_(k[source, :, :width])
            v[target, :, :width].copy_(v[source, :, :width])
            copied += 2 * k[source, :, :width].numel() * k.element_size()
        self._ids[target], self._sources[target] = self._ids[source], self._sources[source]
        self._busy[target], self._busy[source] = True, False
        return copied

    def release(self, slot: int) -> None:
        """Free ``slot`` (its states stay, for a later prompt sharing their prefix)."""
        self._busy[slot] = False

    def forget(self, slot: int) -> None:
        """Free ``slot`` and drop what it held (after a failure part way through a copy)."""
        self._busy[slot] = False
        self._ids[slot], self._sources[slot] = [], None

    # -- the decoder's view ----------------------------------------------------------------
    def step_cache(self, rows: int, context: int) -> StepCache:
        """Views of slots ``[0, rows)`` and their first ``context`` prompt positions (sliding: at most ``window - 1``)."""
        if context > self.capacity:
            raise ValueError(f"context {context} exceeds the capacity {self.capacity}")
        layers = []
        for index, (k, v) in enumerate(zip(self._keys, self._values, strict=True)):
            width = self.width(self.layer_types[index], context)
            layers.append(LayerKV(k[:rows, :, :width], v[:rows, :, :width]))
        return StepCache(layers)
