"""Test support: a tiny random-weight checkpoint laid out the way DiffusionGemma is published.

Unlike :mod:`dg_lsp.testing` (the project's own FIM layout), this checkpoint looks like
``google/diffusiongemma-26B-A4B-it`` at a tiny size: Gemma's special-token ids (``<pad>`` 0,
``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, ``<unusedN>`` from 6, ``<start_of_turn>``
105, ``<end_of_turn>`` 106) and no FIM markers, a Gemma-style ``chat_template.jinja`` with an
``enable_thinking`` switch, the published ``generation_config.json``, a tiny vision tower and
sharded safetensors with ``model.safetensors.index.json``. Everything is seeded.

``python -m dg_lsp.testing_published OUT_DIR`` writes one (also used by the GPU scripts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

from dg_lsp.model.geometry import GEOMETRIES, Geometry

#: ``generation_config.json`` of google/diffusiongemma-26B-A4B-it, verbatim in content.
PUBLISHED_GENERATION_CONFIG: dict[str, Any] = {
    "confidence_threshold": 0.005,
    "eos_token_id": [1, 106, 50],
    "max_denoising_steps": 48,
    "max_new_tokens": 256,
    "pad_token_id": 0,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "stability_threshold": 1,
    "t_max": 0.8,
    "t_min": 0.4,
}

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
#: The thinking channel's markers (``<|channel>thought\\n…<channel|>``).
CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"

#: Gemma's special tokens in id order: pad 0, eos 1, bos 2, unk 3, mask 4, id 5, unused0.. from 6,
#: start/end of turn at 105/106, then the thinking-channel markers.
GEMMA_SPECIAL_TOKENS: tuple[str, ...] = (
    ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]")
    + tuple(f"<unused{i}>" for i in range(105 - 6))
    + (START_OF_TURN, END_OF_TURN, CHANNEL_OPEN, CHANNEL_CLOSE)
)

#: A Gemma-style chat template (this project's own text): turns are ``<start_of_turn>ROLE\\n…<end_of_turn>\\n``;
#: with ``enable_thinking=false`` the model turn opens with an empty thought channel.
CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- for message in messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<start_of_turn>' + role + '\\n' + (message['content'] | trim) + '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<start_of_turn>model\\n' -}}
{%- if enable_thinking is defined and not enable_thinking -%}
{{- '<|channel>thought\\n<channel|>' -}}
{%- endif -%}
{%- endif -%}
"""

_SAMPLE_TEXT = """\
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
Complete the code at the hole in the python file. Reply with only the code.
Code after the hole. Code before the hole. Write the rest of the current line.
fn main() { let v: Vec<i32> = vec![1, 2, 3]; println!("{:?}", v); }
"""


def gemma_style_tokenizer(vocab_size: int) -> Tokenizer:
    """A Gemma-style tokenizer (deterministic): BPE with byte fallback, spaces as ``▁``, Gemma's special ids.

    The pipeline is the one transformers' ``GemmaTokenizer`` builds, so ``tokenizers`` and
    ``AutoTokenizer`` encode alike; the 256 ``<0xXX>`` byte tokens come last.
    """
    trainee = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainee.normalizer = normalizers.Replace(" ", "\u2581")
    trainee.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256,
        min_frequency=1,
        special_tokens=list(GEMMA_SPECIAL_TOKENS),
        initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n", "\t", "\u2581"],
        show_progress=False,
    )
    trainee.train_from_iterator([_SAMPLE_TEXT] * 4, trainer=trainer)
    trained = json.loads(trainee.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in trained["merges"]]
    merges: list[tuple[str, str]] = [(str(a), str(b)) for a, b in pairs]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIAL_TOKENS])
    for index, token in enumerate(GEMMA_SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"special token {token} did not get id {index}")
    return tokenizer


def _tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "padding_side": "left",
    }


def published_config(geometry: Geometry) -> DiffusionGemmaConfig:
    """The model config of a published-layout checkpoint: Gemma's pad/bos ids, eos ``[1, 106]``, a tiny vision tower."""
    return geometry.to_config(pad_id=0, eos_id=[1, 106], bos_id=2)


def write_published_files(
    path: Path,
    config: DiffusionGemmaConfig,
    chat_template: bool = True,
    generation_config: dict[str, Any] | None = None,
) -> None:
    """Everything but the weights: config.json, tokenizer files, generation_config.json, chat_template.jinja.

    GPU scripts that create large random weights on the device write these files with it.
    """
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    gemma_style_tokenizer(min(int(config.get_text_config().vocab_size), 512)).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n", encoding="utf-8")
    gen = PUBLISHED_GENERATION_CONFIG if generation_config is None else generation_config
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    if chat_template:
        (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def build_published_checkpoint(
    path: Path,
    seed: int = 0,
    geometry: Geometry | None = None,
    max_shard_size: str = "2MB",
    chat_template: bool = True,
    generation_config: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight DiffusionGemma checkpoint in the published layout into ``path`` (on the CPU).

    ``chat_template=False`` and ``generation_config`` build the bad variants the tests need.
    """
    config = published_config(geometry or GEOMETRIES["tiny"])
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config)
    model.train(False)
    # Random weights put special tokens at the argmax of many canvas positions; zeroing their
    # (tied) embedding rows makes the model emit ordinary text, which the tests need.
    with torch.no_grad():
        embeddings: torch.Tensor = model.model.decoder.embed_tokens.weight
        embeddings[: len(GEMMA_SPECIAL_TOKENS)] = 0.0
    model.save_pretrained(str(path), max_shard_size=max_shard_size, safe_serialization=True)
    write_published_files(path, config, chat_template, generation_config)  # after: save_pretrained writes its own
    return path


def without_eos_ids(path: Path) -> Path:
    """Remove every eos id from a built checkpoint (generation_config.json and config.json)."""
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text(encoding="utf-8"))
    gen.pop("eos_token_id", None)
    gen_file.write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    config_file = path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("eos_token_id", None)
    if isinstance(config.get("text_config"), dict):
        config["text_config"]["eos_token_id"] = None
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def main() -> None:
    """``python -m dg_lsp.testing_published OUT_DIR [--seed N] [--geometry tiny]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="tiny")
    parser.add_argument("--max-shard-size", default="2MB")
    args = parser.parse_args()
    print(build_published_checkpoint(args.out, args.seed, GEOMETRIES[args.geometry], args.max_shard_size))


if __name__ == "__main__":
    main()
