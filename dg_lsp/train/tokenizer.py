"""Train the byte-level BPE tokenizer of the embedded model on the code corpus.

Usage::

    python -m dg_lsp.train.tokenizer --corpus .work/corpus/corpus.jsonl --out .work/tokenizer \\
        --vocab-size 8192

Design:

* special tokens from :mod:`dg_lsp.special_tokens`, in that order (``<pad>`` = 0, ``<eos>`` = 1,
  ``<bos>`` = 2, ...); no post-processor -- the canvas layout inserts special tokens itself;
* no normaliser (case and every byte kept) and a byte-level alphabet, so any text round-trips
  exactly through ``decode(encode(text))``;
* a code-aware pre-tokenizer: a newline run plus the following indentation is one piece (so
  ``"\\n    "`` / ``"\\n\\t\\t"`` become single tokens), other whitespace runs are kept whole,
  digits are split one by one, words may carry one leading blank or one leading punctuation
  character (``.append``, ``(self``), punctuation runs one leading blank.

Writes ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
``compression.json`` (characters per token per language on held-out files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from dg_lsp.special_tokens import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

log = logging.getLogger("dg_lsp.train.tokenizer")

#: Pieces for the pre-tokenizer, tried left to right at each position.
PRETOKENIZE_PATTERN = (
    r"(?:\r?\n)+[ \t]*"  # newline run + indentation of the next line
    r"|[^\s\p{L}\p{M}\p{N}_]?[\p{L}\p{M}_]+"  # word, optionally glued to one punctuation char (.name, (self)
    r"|[ \t][\p{L}\p{M}_]+"  # word with one leading blank
    r"|\p{N}"  # digits one by one
    r"|[ \t]?[^\s\p{L}\p{M}\p{N}_]+"  # punctuation / operator run with one optional leading blank
    r"|[ \t]+(?=[ \t])|[ \t]+"  # other blank runs (alignment, trailing)
    r"|\s"  # any other whitespace character (\r alone, \f, \v, unicode spaces)
)

HELD_OUT_MOD = 20  # files whose sha256 % 20 == 0 are held out for the compression report


def build_tokenizer() -> Tokenizer:
    """An untrained tokenizer with the model, pre-tokenizer and decoder set up."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    return tok


def train(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """Train the BPE tokenizer on ``texts``; special tokens take ids ``0..len(SPECIAL_TOKENS)-1``."""
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
        max_token_length=32,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(t)
        if got != i:
            raise RuntimeError(f"special token {t} has id {got}, expected {i}")
    return tok


def save(tok: Tokenizer, out_dir: Path, model_max_length: int = 4096) -> None:
    """Write ``tokenizer.json`` plus the ``transformers`` config files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    extra = [t for t in SPECIAL_TOKENS if t not in (PAD, EOS, BOS, UNK)]
    added: dict[str, Any] = {}
    for i, t in enumerate(SPECIAL_TOKENS):
        added[str(i)] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": extra,
        "extra_special_tokens": extra,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special_map: dict[str, Any] = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": extra,
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")


def load(out_dir: Path) -> Any:
    """The saved tokenizer as a ``transformers.PreTrainedTokenizerFast`` with pad/eos/bos/unk
    and the other special tokens set (``AutoTokenizer.from_pretrained(out_dir)`` works too;
    a bare ``PreTrainedTokenizerFast(tokenizer_file=...)`` needs these keyword arguments)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_file=str(Path(out_dir) / "tokenizer.json"),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD, EOS, BOS, UNK)],
        clean_up_tokenization_spaces=False,
    )


def iter_corpus(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _held_out(rec: dict[str, Any]) -> bool:
    digest = str(rec.get("sha256") or hashlib.sha256(str(rec["text"]).encode("utf-8")).hexdigest())
    return int(digest[:8], 16) % HELD_OUT_MOD == 0


def sample_corpus(
    path: Path, sample_mb: float, seed: int = 0
) -> tuple[list[str], dict[str, list[str]], dict[str, int]]:
    """Training texts (at most ``sample_mb`` MB, each language sampled at the same rate),
    held-out texts per language, and total corpus bytes per language."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    held: dict[str, list[str]] = defaultdict(list)
    sizes: dict[str, int] = defaultdict(int)
    for rec in tqdm(iter_corpus(path), desc="read corpus", unit="file"):
        text = str(rec["text"])
        lang = str(rec.get("language", "text"))
        sizes[lang] += len(text)
        if _held_out(rec):
            held[lang].append(text)
        else:
            by_lang[lang].append(text)
    total = sum(sum(len(t) for t in v) for v in by_lang.values())
    rate = min(1.0, sample_mb * 1e6 / max(total, 1))
    rng = random.Random(seed)
    texts: list[str] = []
    for lang in sorted(by_lang):
        items = by_lang[lang]
        rng.shuffle(items)
        budget = sum(len(t) for t in items) * rate
        used = 0
        for t in items:
            if used >= budget:
                break
            texts.append(t)
            used += len(t)
    rng.shuffle(texts)
    return texts, dict(held), dict(sizes)


def compression(tok: Tokenizer, held: dict[str, list[str]], max_chars: int = 1_000_000) -> dict[str, Any]:
    """Characters per token per language (on held-out text), and exact round-trip checks."""
    report: dict[str, Any] = {}
    for lang in sorted(held):
        chars = tokens = 0
        roundtrip_ok = True
        for text in held[lang]:
            if chars >= max_chars:
                break
            ids = tok.encode(text).ids
            chars += len(text)
            tokens += len(ids)
            if roundtrip_ok and tok.decode(ids, skip_special_tokens=False) != text:
                roundtrip_ok = False
        if tokens:
            report[lang] = {"chars": chars, "tokens": tokens, "chars_per_token": round(chars / tokens, 3), "roundtrip": roundtrip_ok}
    all_c = sum(int(v["chars"]) for v in report.values())
    all_t = sum(int(v["tokens"]) for v in report.values())
    report["all"] = {"chars": all_c, "tokens": all_t, "chars_per_token": round(all_c / max(all_t, 1), 3)}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the dg-lsp byte-level BPE tokenizer.")
    ap.add_argument("--corpus", type=Path, default=Path(".work/corpus/corpus.jsonl"))
    ap.add_argument("--out", type=Path, default=Path(".work/tokenizer"))
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=24.0, help="training sample size (MB of text)")
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.time()
    texts, held, sizes = sample_corpus(args.corpus, args.sample_mb, args.seed)
    log.info("training on %d files, %.1f MB", len(texts), sum(len(t) for t in texts) / 1e6)
    tok = train(texts, args.vocab_size, args.min_frequency)
    save(tok, args.out)
    report = compression(tok, held)
    report["_meta"] = {
        "vocab_size": tok.get_vocab_size(),
        "train_files": len(texts),
        "train_chars": sum(len(t) for t in texts),
        "corpus_chars": sizes,
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "compression.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for lang, row in report.items():
        if not lang.startswith("_"):
            log.info("  %-11s %.2f chars/token", lang, row["chars_per_token"])
    log.info("saved %s (vocab %d) in %.0fs", args.out, tok.get_vocab_size(), time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
