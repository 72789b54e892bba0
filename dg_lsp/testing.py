"""Test support: a tiny random-weight DiffusionGemma checkpoint, built deterministically.

Used by the end-to-end tests and the editor tests, which need a real checkpoint directory
(real config, safetensors weights, tokenizer) without shipping one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer

from dg_lsp.model.checkpoint import new_model, save_checkpoint
from dg_lsp.model.geometry import GEOMETRIES
from dg_lsp.special_tokens import SPECIAL_TOKENS

_SAMPLE_CODE = """\
def add(a, b):
    return a + b

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

function greet(name) {
  return `hello ${name}`;
}
const xs = [1, 2, 3].map((x) => x * 2);
fn main() { let v: Vec<i32> = vec![1, 2, 3]; println!("{:?}", v); }
func Sum(xs []int) int { total := 0; for _, x := range xs { total += x }; return total }
int main(void) { printf("%d\\n", 42); return 0; }
local function f(t) for k, v in pairs(t) do print(k, v) end end
if [ -f "$1" ]; then echo "exists"; fi
"""


def tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer trained in memory on a few lines of code (deterministic)."""
    from dg_lsp.train.tokenizer import train

    return train([_SAMPLE_CODE] * 4, vocab_size=vocab_size, min_frequency=1, show_progress=False)


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a tiny random-weight DiffusionGemma checkpoint (with tokenizer) into ``path``."""
    geometry = GEOMETRIES["tiny"]
    tokenizer = tiny_tokenizer(geometry.vocab_size)
    model = new_model(geometry, tokenizer, seed)
    # Random weights put the markers (<eom>, <pad>, language tags…) at the argmax of many
    # positions, so most answers would be empty. Zeroing their (tied) embedding rows makes
    # their logits 0 while ordinary tokens' are random: the model then emits text to test with.
    with torch.no_grad():
        embeddings: torch.Tensor = model.model.decoder.embed_tokens.weight  # tied with the encoder and lm_head
        embeddings[: len(SPECIAL_TOKENS)] = 0.0
    save_checkpoint(model, tokenizer, path)
    return path


def main() -> None:
    """``python -m dg_lsp.testing OUT_DIR``: build the tiny checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_checkpoint(args.out, args.seed))


if __name__ == "__main__":
    main()
