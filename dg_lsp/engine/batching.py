"""One decoder forward for several canvases, each after its own encoded prompt.

Two ways to put the prompts side by side:

- :func:`slot_logits` (what the engine server uses): every request owns a slot of a
  preallocated :class:`~dg_lsp.engine.batched_cache.BatchedStaticKV`, its states stored from
  position 0; the forward reads views of the buffers, so a request joining or leaving copies
  nothing of the others, and only the masks and positions are rebuilt (small tensors).
- :func:`batch_logits` (the earlier way, kept for comparison): the rows' own caches are
  left-padded to a common length and stacked with ``torch.cat`` whenever the set of rows changes.

Either way canvases of different lengths are right-padded, and a 4-D attention mask per
layer type hides every padded key, so each canvas sees exactly what it would see alone: its
own prompt (sliding-window layers: its last ``window - 1`` states) and its own canvas,
bidirectionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from dg_lsp.engine.batched_cache import BatchedStaticKV
from dg_lsp.engine.compiled_step import decoder_logits
from dg_lsp.engine.denoiser import CanvasRow, row_logits
from dg_lsp.engine.prompt_cache import cache_layers, layer_tensors
from dg_lsp.engine.static_cache import StepCache, context_bucket
from dg_lsp.model.typing import text_config, vocab_size


@dataclass
class BatchedPrompts:
    """The stacked prompt caches and attention masks of one set of rows."""

    rows: tuple[int, ...]
    cache: DynamicCache
    masks: dict[str, torch.Tensor]
    canvas_length: int
    positions: torch.Tensor


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros((*tensor.shape[:-2], missing, tensor.shape[-1]))
    return torch.cat([pad, tensor], dim=-2)


def _key_mask(visible: Sequence[int], prompt_slots: int, canvases: Sequence[int], canvas_slots: int, device: torch.device) -> torch.Tensor:
    """``(batch, prompt_slots + canvas_slots)``: true where a row has a real key."""
    mask = torch.zeros((len(visible), prompt_slots + canvas_slots), dtype=torch.bool, device=device)
    for i, (seen, canvas) in enumerate(zip(visible, canvases, strict=True)):
        mask[i, prompt_slots - seen : prompt_slots] = True
        mask[i, prompt_slots : prompt_slots + canvas] = True
    return mask


def _as_attention_mask(keys: torch.Tensor, queries: int, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Expand a key mask to ``(batch, 1, queries, keys)`` in the form the attention kernel takes."""
    mask = keys[:, None, None, :].expand(-1, 1, queries, -1)
    if implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _own_cache(row: CanvasRow) -> DynamicCache:
    if row.cache is None:
        raise ValueError("a row without a cache of its own cannot be stacked")
    return row.cache


def batch_prompts(model: DiffusionGemmaForBlockDiffusion, rows: Sequence[CanvasRow]) -> BatchedPrompts:
    """Stack the rows' prompt caches (left-padded) and build the per-layer-type masks."""
    config = text_config(model)
    device = model.device
    canvas_slots = max(row.spec.length for row in rows)
    canvases = [row.spec.length for row in rows]
    stacked = DynamicCache(config=config)
    masks: dict[str, torch.Tensor] = {}
    implementation = str(model.config._attn_implementation)
    dtype = model.model.decoder.embed_tokens.weight.dtype
    per_row_layers = [cache_layers(_own_cache(row)) for row in rows]
    layer_types: list[str] = list(config.layer_types or [])
    for index, (mine, layer_type) in enumerate(zip(cache_layers(stacked), layer_types, strict=True)):
        theirs = [layers[index] for layers in per_row_layers]
        keys, values = zip(*(layer_tensors(layer) for layer in theirs), strict=True)
        slots = max(k.shape[-2] for k in keys)
        batch_keys = torch.cat([_left_pad(k, slots) for k in keys], dim=0)
        batch_values = torch.cat([_left_pad(v, slots) for v in values], dim=0)
        mine.lazy_initialization(batch_keys, batch_values)
        mine.keys, mine.values = batch_keys, batch_values
        if isinstance(mine, DynamicSlidingWindowLayer):
            mine.cumulative_length = max(row.prompt_length for row in rows)
        if layer_type not in masks:
            visible = [k.shape[-2] for k in keys]
            key_mask = _key_mask(visible, slots, canvases, canvas_slots, device)
            masks[layer_type] = _as_attention_mask(key_mask, canvas_slots, implementation, dtype)
    positions = torch.stack(
        [torch.arange(row.prompt_length, row.prompt_length + canvas_slots, device=device) for row in rows]
    )
    return BatchedPrompts(
        rows=tuple(id(row) for row in rows), cache=stacked, masks=masks, canvas_length=canvas_slots, positions=positions
    )


def _right_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros((tensor.shape[0], missing, *tensor.shape[2:]))
    return torch.cat([tensor, pad], dim=1)


@torch.inference_mode()
def batch_logits(
    model: DiffusionGemmaForBlockDiffusion, rows: Sequence[CanvasRow], prompts: BatchedPrompts | None = None
) -> tuple[list[torch.Tensor], BatchedPrompts | None]:
    """Decoder logits ``(1, length_i, vocab)`` for every row, from one forward pass.

    ``prompts`` is the stacking from the previous call; it is rebuilt only when the set of
    rows changed. A single row runs on its own cache with no padding at all.
    """
    if len(rows) == 1:
        return [row_logits(model, rows[0])], None
    if prompts is None or prompts.rows != tuple(id(row) for row in rows):
        prompts = batch_prompts(model, rows)
    width = prompts.canvas_length
    canvas = torch.cat([_right_pad(row.canvas, width) for row in rows], dim=0)
    embed = model.model.decoder.embed_tokens.weight
    conditioning: torch.Tensor | None = None
    conditioning_mask: torch.Tensor | None = None
    if any(row.self_conditioning is not None for row in rows):
        parts = []
        for row in rows:
            logits = row.self_conditioning
            if logits is None:
                logits = embed.new_zeros((1, row.spec.length, vocab_size(model)))
            parts.append(_right_pad(logits, width))
        conditioning = torch.cat(parts, dim=0)
        conditioning_mask = torch.tensor([row.self_conditioning is not None for row in rows], device=canvas.device)
    output = model(
        decoder_input_ids=canvas,
        past_key_values=prompts.cache,
        self_conditioning_logits=conditioning,
        self_conditioning_mask=conditioning_mask,
        decoder_attention_mask=prompts.masks,
        decoder_position_ids=prompts.positions,
    ).logits
    return [output[i : i + 1, : row.spec.length] for i, row in enumerate(rows)], prompts


@dataclass
class SlotLayout:
    """What a forward over one set of slots reuses from step to step (rebuilt when the set changes)."""

    #: ``(slot, row)`` of each member (the rows themselves: an ``id`` may be reused once a row is gone).
    members: tuple[tuple[int, CanvasRow], ...]
    #: Batch rows of the forward: slots ``[0, rows)``; rows without a member are filler.
    rows: int
    context: int
    canvas_length: int
    cache: StepCache
    #: Per layer type; None when no key is hidden in any row (the decoder then uses no mask).
    masks: dict[str, torch.Tensor] | None
    positions: torch.Tensor
    canvas: torch.Tensor
    conditioning: torch.Tensor | None = None

    def serves(self, members: Sequence[tuple[int, CanvasRow]]) -> bool:
        """Whether this layout is for exactly ``members`` (same rows, same slots, same order)."""
        return len(members) == len(self.members) and all(
            slot == mine_slot and row is mine_row
            for (slot, row), (mine_slot, mine_row) in zip(members, self.members, strict=True)
        )


def slot_layout(
    model: DiffusionGemmaForBlockDiffusion,
    kv: BatchedStaticKV,
    members: Sequence[tuple[int, CanvasRow]],
    fixed_shapes: bool = False,
) -> SlotLayout:
    """Masks, positions and buffer views for a forward over ``members`` (``(slot, row)`` pairs).

    ``fixed_shapes``: every slot is a batch row and the context is padded to its bucket (a
    compiled step sees a few shapes only); else the rows end at the highest member slot and
    the context at the longest member prompt (no padded compute beyond that).
    """
    device = model.device
    longest = max(row.prompt_length for _, row in members)
    rows = kv.slots if fixed_shapes else max(slot for slot, _ in members) + 1
    context = min(context_bucket(longest), kv.capacity) if fixed_shapes else longest
    width = max(row.spec.length for _, row in members)
    by_slot = dict(members)
    implementation = str(model.config._attn_implementation)
    dtype = model.model.decoder.embed_tokens.weight.dtype
    key_masks: dict[str, torch.Tensor] = {}
    for layer_type in dict.fromkeys(kv.layer_types):
        slots = kv.width(layer_type, context)
        mask = torch.zeros((rows, slots + width), dtype=torch.bool, device=device)
        for slot in range(rows):
            row = by_slot.get(slot)
            if row is None:  # filler: sees its own (discarded) canvas only
                mask[slot, slots:] = True
                continue
            mask[slot, : kv.visible(layer_type, row.prompt_length)] = True
            mask[slot, slots : slots + row.spec.length] = True
        key_masks[layer_type] = mask
    masks = None
    if not all(bool(mask.all()) for mask in key_masks.values()):
        masks = {t: _as_attention_mask(m, width, implementation, dtype).contiguous() for t, m in key_masks.items()}
    positions = torch.arange(width, device=device).repeat(rows, 1)
    for slot, row in members:
        positions[slot] += row.prompt_length
    return SlotLayout(
        members=tuple(members),
        rows=rows,
        context=context,
        canvas_length=width,
        cache=kv.step_cache(rows, context),
        masks=masks,
        positions=positions,
        canvas=torch.zeros((rows, width), dtype=torch.long, device=device),
    )


@torch.inference_mode()
def slot_logits(
    model: DiffusionGemmaForBlockDiffusion,
    kv: BatchedStaticKV,
    members: Sequence[tuple[int, CanvasRow]],
    layout: SlotLayout | None = None,
    fixed_shapes: bool = False,
) -> tuple[list[torch.Tensor], SlotLayout]:
    """Decoder logits ``(1, length_i, vocab)`` for every member, from one forward over the slots.

    ``layout`` is the previous call's; it is rebuilt (masks and positions only: no KV is
    copied) when the members changed.
    """
    if layout is None or not layout.serves(members):
        layout = slot_layout(model, kv, members, fixed_shapes)
    # One row filling the whole batch: its own tensors, nothing copied.
    alone = members[0][1] if layout.rows == 1 and members[0][1].spec.length == layout.canvas_length else None
    canvas = alone.canvas if alone is not None else layout.canvas
    if alone is None:
        for slot, row in members:
            canvas[slot, : row.spec.length] = row.canvas[0]
    conditioning: torch.Tensor | None = None
    conditioned: torch.Tensor | None = None
    if alone is not None and alone.self_conditioning is not None:  # one row: its own logits, no copy
        conditioning = alone.self_conditioning
    elif any(row.self_conditioning is not None for _, row in members):
        if layout.conditioning is None:
            embed = model.model.decoder.embed_tokens.weight
            layout.conditioning = embed.new_zeros((layout.rows, layout.canvas_length, vocab_size(model)))
        conditioning = layout.conditioning
        flags = [False] * layout.rows
        for slot, row in members:
            if row.self_conditioning is not None:
                conditioning[slot, : row.spec.length] = row.self_conditioning[0]
                flags[slot] = True
        if not all(flags):  # (all conditioned: the mask would multiply by one)
            conditioned = torch.tensor(flags, device=canvas.device)
    logits = decoder_logits(model, canvas, conditioning, conditioned, layout.positions, layout.masks, layout.cache)
    return [logits[slot : slot + 1, : row.spec.length] for slot, row in members], layout
