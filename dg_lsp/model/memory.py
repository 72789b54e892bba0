"""Will the model fit? Estimate its memory from config.json before loading, and what is free.

Weights are counted exactly: the model is built on the ``meta`` device from its config (no
memory is allocated), and each unique parameter is sized in the dtype or quantized format it
will have. Working memory on top of the weights: the transient the load itself needs (the
vision tower is read and then dropped), logits and activations of a full canvas, the encoder
KV cache of a long prompt, a dequantized layer of experts for quantized modes, and a margin
for the allocator.

``DG_LSP_MAX_MEMORY`` (e.g. ``20GiB``, ``512MiB``, ``24GB``, or a byte count) replaces what the
device reports free: for tests, and for users who share a GPU or know better than the estimate.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig

from dg_lsp.model.errors import ModelLoadError
from dg_lsp.model.quantize import Quantize, is_quantized_param, quantized_bytes

#: Environment variable: memory dg-lsp may assume free on the chosen device.
MAX_MEMORY_ENV = "DG_LSP_MAX_MEMORY"
GIB = 1 << 30
#: Fixed working memory (CUDA context workspaces, Python-side tensors, tokenizer...).
BASE_WORKING = GIB // 2
#: Prompt tokens whose encoder KV cache the estimate reserves room for.
RESERVED_PROMPT_TOKENS = 8192
#: Allocator slack, as a fraction of the weights.
FRAGMENTATION = 0.03

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": GIB, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs on its device."""

    #: Resident weights (text model only; the vision tower is dropped after loading).
    weights: int
    #: The vision tower, held only while loading.
    vision: int
    #: Activations, logits, KV cache, dequantized experts and allocator slack.
    working: int
    dtype: torch.dtype
    quantize: Quantize
    #: Canvases denoised at once (an engine server's batch).
    canvases: int = 1

    @property
    def total(self) -> int:
        """The most the model needs at once: loading (weights + vision) or running (weights + working)."""
        return self.weights + max(self.vision, self.working)


def gib(n: int) -> str:
    """``n`` bytes as ``12.3 GiB``."""
    return f"{n / GIB:.1f} GiB"


def parse_size(text: str) -> int:
    """``20GiB``, ``512 MiB``, ``24GB``, ``1e9`` or a byte count → bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 20GiB, 512MiB, 24GB)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return int(value)


def load_config(path: Path) -> DiffusionGemmaConfig:
    """The checkpoint's ``DiffusionGemmaConfig`` (from config.json)."""
    return DiffusionGemmaConfig.from_pretrained(str(path), local_files_only=True)


def _meta_parameters(config: DiffusionGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Unique parameters (tied ones once) of the model ``config`` describes: name → shape."""
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def weight_bytes(config: DiffusionGemmaConfig, dtype: torch.dtype, quantize: Quantize) -> tuple[int, int]:
    """(text weights, vision tower) bytes in ``dtype`` with ``quantize`` applied to the quantized weights."""
    text = vision = 0
    for name, shape in _meta_parameters(config).items():
        if "vision" in name:
            vision += quantized_bytes("none", shape, dtype)
        elif quantize != "none" and is_quantized_param(name):
            text += quantized_bytes(quantize, shape, dtype)
        else:
            text += quantized_bytes("none", shape, dtype)
    return text, vision


def working_bytes(
    config: DiffusionGemmaConfig, dtype: torch.dtype, quantize: Quantize, weights: int, canvases: int = 1
) -> int:
    """Memory for running ``canvases`` canvases at once on top of the weights (see the module docstring)."""
    text = cast(DiffusionGemmaTextConfig, config.text_config)
    itemsize = torch.empty((), dtype=dtype).element_size()
    canvas = int(config.canvas_length or 256)
    hidden, vocab = int(text.hidden_size), int(text.vocab_size)
    # logits in float32 plus the sampler's softmax / entropy copies, and a few hidden-size activations
    logits = canvases * (canvas * vocab * 4 * 4 + canvas * hidden * itemsize * 16)
    # encoder KV cache for the reserved prompt: keys and values per layer (sliding layers keep a window)
    kv = 0
    for index, layer_type in enumerate(text.layer_types or []):
        layer = text.per_layer_config[index]
        full = layer_type == "full_attention"
        tokens = RESERVED_PROMPT_TOKENS if full else min(RESERVED_PROMPT_TOKENS, int(text.sliding_window))
        kv += canvases * 2 * int(layer.num_key_value_heads) * int(layer.head_dim) * tokens * itemsize
    dequantized = 0
    if quantize != "none":  # one layer's experts dequantized at a time
        experts = int(text.num_experts or 0) * int(text.moe_intermediate_size or 0) * hidden * 3
        dequantized = experts * itemsize
    return BASE_WORKING + logits + kv + dequantized + int(weights * FRAGMENTATION)


def estimate(
    config: DiffusionGemmaConfig, dtype: torch.dtype, quantize: Quantize, canvases: int = 1
) -> MemoryEstimate:
    """The memory the model of ``config`` needs in ``dtype`` with ``quantize``, denoising ``canvases`` at once."""
    weights, vision = weight_bytes(config, dtype, quantize)
    working = working_bytes(config, dtype, quantize, weights, canvases)
    return MemoryEstimate(
        weights=weights, vision=vision, working=working, dtype=dtype, quantize=quantize, canvases=canvases
    )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(free bytes on ``device`` or None if unknown, where the number comes from)."""
    override = os.environ.get(MAX_MEMORY_ENV)
    if override:
        try:
            return parse_size(override), MAX_MEMORY_ENV
        except ValueError as exc:
            raise ModelLoadError(f"{MAX_MEMORY_ENV}: {exc}") from exc
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    if device.type == "cpu":
        return _meminfo_available(), "available RAM"
    return None, "unknown"


def refusal(
    config: DiffusionGemmaConfig, name: str, device: torch.device, need: MemoryEstimate, free: int, source: str
) -> str:
    """The sentence that refuses a load that would not fit, naming the ways out that would help."""
    kind = str(need.dtype).removeprefix("torch.") if need.quantize == "none" else need.quantize
    where = f"{gib(free)} is {source}" if source != MAX_MEMORY_ENV else f"{MAX_MEMORY_ENV} allows {gib(free)}"
    ways = []
    note = ""
    if need.quantize == "none":
        quantized = estimate(config, need.dtype, "fp8", need.canvases).total
        if quantized <= free:
            ways.append(f'quantize it (--quantize fp8 or int8, about {gib(quantized)}; setting "quantize")')
        else:
            note = f" (quantized with fp8 or int8 it would still need about {gib(quantized)})"
    ways.append("use a GPU with more free memory (e.g. --device cuda:1)" if device.type == "cuda" else "use a GPU (--device cuda)")
    ways.append('or run `dg-lsp engine-serve` on a machine that has the memory and set engine.kind to "remote"')
    return (
        f"{name} needs about {gib(need.total)} on {device} ({kind} weights {gib(need.weights)} + "
        f"{gib(need.total - need.weights)} to load and run) but {where}{note}: " + ", ".join(ways)
    )


def check_fits(
    config: DiffusionGemmaConfig,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    quantize: Quantize,
    canvases: int = 1,
) -> MemoryEstimate:
    """The estimate, if it fits in what is free; else :class:`ModelLoadError` with :func:`refusal`'s sentence."""
    need = estimate(config, dtype, quantize, canvases)
    free, source = available_bytes(device)
    if free is not None and need.total > free:
        raise ModelLoadError(refusal(config, name, device, need, free, source))
    return need
