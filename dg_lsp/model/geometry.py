"""Named DiffusionGemma geometries: the real 26B-A4B one and the project's small ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from transformers import DiffusionGemmaConfig

#: A vision tower of ~0.7M parameters: DiffusionGemmaConfig always builds one.
TINY_VISION: dict[str, Any] = {
    "model_type": "gemma4_vision",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "intermediate_size": 64,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 32,
}


@dataclass(frozen=True)
class Geometry:
    """The shape of a DiffusionGemma text model."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    global_head_dim: int
    num_global_key_value_heads: int
    intermediate_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k_experts: int
    sliding_window: int
    canvas_length: int = 256
    max_position_embeddings: int = 8192
    sliding_pattern: int = 6

    def to_config(self, pad_id: int = 0, eos_id: int | list[int] = 1, bos_id: int = 2) -> DiffusionGemmaConfig:
        """A ``DiffusionGemmaConfig`` with this text geometry and a tiny vision tower."""
        layer_types = [
            "sliding_attention" if (i + 1) % self.sliding_pattern else "full_attention"
            for i in range(self.num_hidden_layers)
        ]
        layer_types[-1] = "full_attention"
        text: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "global_head_dim": self.global_head_dim,
            "num_global_key_value_heads": self.num_global_key_value_heads,
            "attention_k_eq_v": True,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_experts": self.num_experts,
            "top_k_experts": self.top_k_experts,
            "sliding_window": self.sliding_window,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_types": layer_types,
            "pad_token_id": pad_id,
            "eos_token_id": eos_id,
            "bos_token_id": bos_id,
            "final_logit_softcapping": 30.0,
        }
        return DiffusionGemmaConfig(
            text_config=text,
            vision_config=dict(TINY_VISION),
            canvas_length=self.canvas_length,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for model cards and benchmark reports)."""
        return asdict(self)


GEOMETRIES: dict[str, Geometry] = {
    # The published google/diffusiongemma-26B-A4B-it text geometry (see shared/notes/gpu-baselines.md).
    "26b-a4b": Geometry(
        vocab_size=262_144,
        hidden_size=2816,
        num_hidden_layers=30,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        global_head_dim=512,
        num_global_key_value_heads=2,
        intermediate_size=2112,
        moe_intermediate_size=704,
        num_experts=128,
        top_k_experts=8,
        sliding_window=1024,
        max_position_embeddings=131_072,
    ),
    # Unit-test size: builds in well under a second on a CPU.
    "tiny": Geometry(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        num_global_key_value_heads=1,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=4,
        top_k_experts=2,
        sliding_window=4096,
        sliding_pattern=2,
    ),
    # The embedded default code model (trained by dg_lsp.train): small enough for a laptop CPU.
    "small": Geometry(
        vocab_size=8192,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        global_head_dim=64,
        num_global_key_value_heads=2,
        intermediate_size=512,
        moe_intermediate_size=256,
        num_experts=4,
        top_k_experts=1,
        sliding_window=4096,
        sliding_pattern=3,
        canvas_length=128,
    ),
}

# A candidate for a GPU training run from scratch (``gpu_run device --geometry medium --from-scratch``): the small
# model widened and deepened, 22.3M parameters, ~2x its CPU cost (one core, compiled, random weights: 18.0 vs 8.7 ms
# per step of a 32-token canvas; benchmarks/RESULTS.md, session 23).
GEOMETRIES["medium"] = replace(
    GEOMETRIES["small"], hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=768,
    moe_intermediate_size=384,
)
