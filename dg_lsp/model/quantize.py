"""Weight-only quantization at load time, with torchao through transformers' ``TorchAoConfig``.

What is quantized: every projection of the text layers (attention q/k/v/o, the dense MLP, the
self-conditioning MLP) and the MoE's fused 3-D expert tensors ``experts.gate_up_proj`` /
``experts.down_proj`` (DiffusionGemma stores experts as ``[experts, out, in]`` parameters, not
``nn.Linear``). Kept as they are: the tied embedding / lm_head, the router, norms and scalars.

Modes:

- ``fp8``: float8 e4m3 weights with one float32 scale per output row; works with transformers'
  default grouped-matmul experts (the layer's experts are dequantized per forward). CPU and CUDA.
- ``int8``: int8 weights, one scale and zero point per output row; torchao's int8 tensor has no
  grouped matmul, so the experts run transformers' per-expert loop (``eager``). CPU and CUDA.
- ``int4``: groups of 128 weights share a bfloat16 scale and zero point (tinygemm layout); CUDA
  (compute capability 8.0+) only, experts in the per-expert loop.

The encoder and decoder share their text weights; quantizing at load keeps them shared.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import torch

if TYPE_CHECKING:
    from transformers import TorchAoConfig

Quantize = Literal["none", "fp8", "int8", "int4"]
QUANTIZE_MODES: tuple[str, ...] = get_args(Quantize)

#: int4 group size (weights per scale / zero point).
INT4_GROUP = 128

#: Parameter names (as in the checkpoint) that are quantized: text-layer projections and fused experts.
QUANTIZED_PARAMS = (
    r".*\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight",
    r".*\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight",
    r".*\.layers\.\d+\.experts\.(gate_up_proj|down_proj)",
    r".*\.self_conditioning\.(gate|up|down)_proj\.weight",
)
#: Modules never quantized (transformers would otherwise skip every tied weight, i.e. all of them).
NOT_CONVERTED = [
    "lm_head",
    "model.decoder.embed_tokens",
    "model.encoder.language_model.embed_tokens",
    "model.encoder.vision_tower",
    "model.encoder.embed_vision",
]

_QUANTIZED = re.compile("|".join(f"(?:{pattern})" for pattern in QUANTIZED_PARAMS))


class QuantizeError(ValueError):
    """A quantization mode that cannot be used here; the message says why."""


def is_quantized_param(name: str) -> bool:
    """Whether ``name`` (a text-model parameter) is stored quantized; vision weights never are."""
    return "vision" not in name and _QUANTIZED.fullmatch(name) is not None


def check_mode(mode: str, device: torch.device) -> Quantize:
    """Validate ``mode`` for ``device``; raises :class:`QuantizeError` with the way out."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown quantization {mode!r} (use {', '.join(QUANTIZE_MODES)})")
    if mode == "int4":
        if device.type != "cuda":
            raise QuantizeError("--quantize int4 needs a CUDA GPU; on the CPU use fp8 or int8")
        if torch.cuda.get_device_capability(device)[0] < 8:
            raise QuantizeError("--quantize int4 needs a GPU of compute capability 8.0 or newer; use fp8 or int8")
    return cast(Quantize, mode)


def experts_implementation(mode: Quantize) -> str | None:
    """The experts implementation a mode needs (None: transformers' default, grouped matmul)."""
    return "eager" if mode in ("int8", "int4") else None


def quantization_config(mode: Quantize) -> TorchAoConfig | None:
    """The ``quantization_config`` for ``from_pretrained`` (None for ``none``)."""
    if mode == "none":
        return None
    from torchao.quantization import FqnToConfig, Float8WeightOnlyConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    per_mode: dict[str, Any] = {
        "fp8": lambda: Float8WeightOnlyConfig(),
        "int8": lambda: Int8WeightOnlyConfig(),
        "int4": lambda: Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d"),
    }
    weight_config = per_mode[mode]()
    patterns = {f"re:{pattern}": weight_config for pattern in QUANTIZED_PARAMS}
    return TorchAoConfig(FqnToConfig(patterns), modules_to_not_convert=list(NOT_CONVERTED))


def quantized_bytes(mode: Quantize, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a weight of ``shape`` takes in ``mode`` (scales included); ``none``: as ``dtype``."""
    numel = 1
    for size in shape:
        numel *= size
    rows = numel // shape[-1]
    if mode == "fp8":
        return numel + rows * 4  # e4m3 values + a float32 scale per row
    if mode == "int8":
        return numel + rows * (4 + 1)  # int8 values + a float32 scale and an int8 zero point per row
    if mode == "int4":
        return numel // 2 + (numel // INT4_GROUP) * 2 * 2  # packed nibbles + bf16 scale and zero per group
    return numel * torch.empty((), dtype=dtype).element_size()


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes actually held by ``tensor``: a torchao quantized tensor's inner tensors, else its own."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor.nbytes
    names, _ = flatten(tensor)
    return sum(storage_bytes(getattr(tensor, name)) for name in names)
