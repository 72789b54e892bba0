"""Weight-only quantization at load time, with torchao through transformers' ``TorchAoConfig``.

What is quantized: every projection of the text layers (attention q/k/v/o, the dense MLP, the
self-conditioning MLP) and the MoE's fused 3-D expert tensors ``experts.gate_up_proj`` /
``experts.down_proj`` (DiffusionGemma stores experts as ``[experts, out, in]`` parameters, not
``nn.Linear``). Kept as they are: the tied embedding / lm_head, the router, norms and scalars.

Modes (CPU and CUDA; each halves the weights of a bfloat16 model):

- ``fp8``: float8 e4m3 weights with one float32 scale per output row.
- ``int8``: int8 weights with a float32 scale and an int8 zero point per output row.

Linear layers multiply through torchao's tensors. The fused experts cannot: torchao's quantized
tensors refuse views (transpose, indexing) under ``torch.inference_mode``, and its int8 tensor has
no grouped matmul. So the experts run :func:`dequantized_grouped_mm`, transformers' grouped-matmul
forward on the layer's experts dequantized for that forward (one layer's worth of transient memory).

int4 is not offered: torchao's int4 layouts need CUDA kernels (so nothing could be checked on a
CPU), and its tile-packed layout has no dequantize to run the fused experts with.

The encoder and decoder share their text weights; quantizing at load keeps them shared.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import torch

if TYPE_CHECKING:
    from transformers import TorchAoConfig

Quantize = Literal["none", "fp8", "int8"]
QUANTIZE_MODES: tuple[str, ...] = get_args(Quantize)

#: The experts implementation registered for quantized modes (see :func:`dequantized_grouped_mm`).
DEQUANTIZED_EXPERTS = "dg_lsp_dequantized_grouped_mm"

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


def check_mode(mode: str) -> Quantize:
    """Validate ``mode``; raises :class:`QuantizeError` naming the modes there are."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown quantization {mode!r} (use {', '.join(QUANTIZE_MODES)})")
    return cast(Quantize, mode)


class _DequantizedExperts:
    """An experts module seen with its quantized fused weights dequantized (for one forward)."""

    def __init__(self, experts: torch.nn.Module) -> None:
        from torchao.utils import TorchAOBaseTensor

        self._experts = experts
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(experts, name)
            setattr(self, name, weight.dequantize() if isinstance(weight, TorchAOBaseTensor) else weight)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._experts, name)


def dequantized_grouped_mm(
    experts: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers' grouped-matmul experts forward on the layer's dequantized expert weights."""
    from transformers.integrations.moe import grouped_mm_experts_forward

    view = cast(torch.nn.Module, _DequantizedExperts(experts))
    return grouped_mm_experts_forward(view, hidden_states, top_k_index, top_k_weights)


def experts_implementation(mode: Quantize) -> str | None:
    """The experts implementation a mode needs (None: transformers' default, grouped matmul)."""
    if mode == "none":
        return None
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(DEQUANTIZED_EXPERTS, dequantized_grouped_mm)
    return DEQUANTIZED_EXPERTS


def quantization_config(mode: Quantize) -> TorchAoConfig | None:
    """The ``quantization_config`` for ``from_pretrained`` (None for ``none``)."""
    if mode == "none":
        return None
    from torchao.quantization import FqnToConfig, Float8WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    weight_config = Float8WeightOnlyConfig() if mode == "fp8" else Int8WeightOnlyConfig()
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
    return numel * torch.empty((), dtype=dtype).element_size()


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes actually held by ``tensor``: a torchao quantized tensor's inner tensors, else its own."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor.nbytes
    names, _ = flatten(tensor)
    return sum(storage_bytes(getattr(tensor, name)) for name in names)
