"""One decoder forward for several canvases, each after its own encoded prompt.

Prompts differ in length, so their encoder caches are left-padded to a common length and
stacked along the batch; canvases of different lengths are right-padded. A 4-D attention
mask per layer type hides every padded key, so each canvas sees exactly what it would see
alone: its own prompt (sliding-window layers: its last ``window - 1`` states) and its own
canvas, bidirectionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from dg_lsp.engine.denoiser import CanvasRow, row_logits
from dg_lsp.engine.prompt_cache import cache_layers, layer_tensors
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
    per_row_layers = [cache_layers(row.cache) for row in rows]
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
