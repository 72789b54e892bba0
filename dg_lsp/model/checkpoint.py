"""Write checkpoint directories: model weights (safetensors), config and tokenizer files."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp import special_tokens as st
from dg_lsp.model.geometry import Geometry


def new_model(geometry: Geometry, tokenizer: Tokenizer, seed: int) -> DiffusionGemmaForBlockDiffusion:
    """A randomly initialised model of ``geometry`` whose special ids match ``tokenizer``."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    config = geometry.to_config(pad_id=vocab[st.PAD], eos_id=vocab[st.EOS], bos_id=vocab[st.BOS])
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config)
    model.train(False)
    return model


def save_checkpoint(
    model: DiffusionGemmaForBlockDiffusion, tokenizer: Tokenizer | Path, out_dir: Path, drop_vision: bool = False
) -> None:
    """Save weights as safetensors (without the unused vision tower), config and tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if drop_vision:
        state = {k: v for k, v in state.items() if "vision" not in k and "embed_vision" not in k}
    model.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
    if isinstance(tokenizer, Path):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer / name).exists():
                shutil.copy(tokenizer / name, out_dir / name)
    else:
        from dg_lsp.train.tokenizer import save

        save(tokenizer, out_dir)
