"""Typed accessors for transformers' loosely typed DiffusionGemma configs."""

from __future__ import annotations

from typing import cast

from transformers import DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig


def text_config(model: DiffusionGemmaForBlockDiffusion) -> DiffusionGemmaTextConfig:
    """The text sub-config of a loaded model."""
    return cast(DiffusionGemmaTextConfig, model.config.text_config)


def vocab_size(model: DiffusionGemmaForBlockDiffusion) -> int:
    """Output vocabulary size."""
    return int(text_config(model).vocab_size)
