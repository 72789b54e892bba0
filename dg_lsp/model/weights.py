"""Check a checkpoint's weight files and load its weights: sharded or not, quantized or not, text only.

The published layout is ``model-0000N-of-0000M.safetensors`` shards listed in
``model.safetensors.index.json``; a missing, truncated or corrupt shard is named in the error
before transformers touches anything. The vision tower is loaded (transformers always builds it)
and dropped right after: dg-lsp only ever feeds text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.model.errors import ModelLoadError
from dg_lsp.model.quantize import Quantize, experts_implementation, quantization_config

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"


def _read_index(index: Path) -> dict[str, Any]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index} is not valid JSON: {exc}") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"{index} has no weight_map")
    return cast(dict[str, Any], data)


def weight_files(path: Path, fix: str = "") -> tuple[list[Path], int | None]:
    """The checkpoint's safetensors files, each checked to exist and be readable, and the index's total_size.

    ``fix`` is appended to a missing/corrupt-file message (e.g. how to download again).
    """
    suffix = f"; {fix}" if fix else ""
    index = path / INDEX_FILE
    total_size: int | None = None
    if index.is_file():
        data = _read_index(index)
        names = sorted({str(name) for name in data["weight_map"].values()})
        size = data.get("metadata", {}).get("total_size") if isinstance(data.get("metadata"), dict) else None
        total_size = int(size) if isinstance(size, (int, float)) else None
        files = [path / name for name in names]
        for file in files:
            if not file.is_file():
                raise ModelLoadError(f"{path} is missing weight shard {file.name} (listed in {INDEX_FILE}){suffix}")
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{path} has no *.safetensors weights{suffix}")
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass  # reads and validates the header against the file's length
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"weight file {file.name} in {path} is corrupt or incomplete ({exc}){suffix}") from exc
    return files, total_size


def drop_vision(model: DiffusionGemmaForBlockDiffusion) -> int:
    """Remove the vision tower and its projection (text-only use); returns the bytes freed."""
    encoder = model.model.encoder
    freed = 0
    for name in ("vision_tower", "embed_vision"):
        module = getattr(encoder, name, None)
        if isinstance(module, torch.nn.Module):
            freed += sum(p.nbytes for p in module.parameters()) + sum(b.nbytes for b in module.buffers())
            setattr(encoder, name, None)
    return freed


def load_weights(
    path: Path, device: torch.device, dtype: torch.dtype, quantize: Quantize, keep_vision: bool = False
) -> DiffusionGemmaForBlockDiffusion:
    """``from_pretrained`` straight onto ``device`` (quantizing as it reads), then drop the vision tower."""
    if device.type == "cuda" and device.index is None:  # accelerate's device maps want an index
        device = torch.device("cuda", torch.cuda.current_device())
    kwargs: dict[str, Any] = {}
    implementation = experts_implementation(quantize)
    if implementation is not None:
        kwargs["experts_implementation"] = implementation
    loaded, info = cast(
        tuple[DiffusionGemmaForBlockDiffusion, dict[str, list[str]]],
        DiffusionGemmaForBlockDiffusion.from_pretrained(
            str(path),
            dtype=dtype,
            device_map={"": device},
            quantization_config=quantization_config(quantize),
            output_loading_info=True,
            local_files_only=True,
            **kwargs,
        ),
    )
    missing = [key for key in info.get("missing_keys", []) if "vision" not in key]
    if missing:
        raise ModelLoadError(f"{path}: weights are incomplete ({len(missing)} tensors missing, e.g. {missing[0]})")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        raise ModelLoadError(f"{path}: weights do not match config.json (e.g. {mismatched[0]})")
    loaded.train(False)
    if not keep_vision:
        freed = drop_vision(loaded)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("dropped the vision tower (%.1f MiB)", freed / 2**20)
    return loaded
