"""Tokenizer training on a tiny in-memory corpus: round trip, special ids, transformers loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from dg_lsp.special_tokens import SPECIAL_TOKENS
from dg_lsp.train import tokenizer as tk

PY = '''import os


class Greeter:
    """Say hello."""

    def __init__(self, name: str) -> None:
        self.name = name

    def greet(self, times: int = 3) -> str:
        out = []
        for i in range(times):
            if i % 2 == 0:
                out.append(f"hello {self.name} #{i}")
            else:
                out.append("bye")
        return "\\n".join(out)
'''

JS = """export function sum(xs) {
\tlet total = 0;
\tfor (const x of xs) {
\t\ttotal += x * 1024;
\t}
\treturn total;
}
"""

GO = """package main

import "fmt"

func main() {
\tfor i := 0; i < 10; i++ {
\t\tfmt.Println(i)
\t}
}
"""

SAMPLES = [
    PY,
    JS,
    GO,
    "def f(x):\r\n    return x\r\n",
    "s = 'héllo wörld — 你好 🚀'\n\tindented\t\ttabs\n",
    "   leading spaces and trailing   \n\n\n",
    "x=1;;;y==2!=3 <= >= -> => :: ... ** //",
    "<pad> <eos> literal special text <fim_middle>",
    "\x00\x01\x7f\u00a0\u2028 weird bytes \ufeffBOM",
    "",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Path]:
    texts = [PY, JS, GO] * 30
    tok = tk.train(texts, vocab_size=400, min_frequency=2, show_progress=False)
    out = tmp_path_factory.mktemp("tok")
    tk.save(tok, out)
    return tok, out


def test_special_token_ids(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("<eos>") == 1 and tok.token_to_id("<bos>") == 2


@pytest.mark.parametrize("text", SAMPLES)
def test_roundtrip(trained: tuple[Tokenizer, Path], text: str) -> None:
    tok, _ = trained
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_no_automatic_specials_and_whitespace_tokens(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    ids = tok.encode("x = 1").ids
    assert all(i >= len(SPECIAL_TOKENS) for i in ids)
    vocab = tok.get_vocab()
    # indentation after a newline is learned as one token; digits are never merged
    assert "Ċ" + "Ġ" * 8 in vocab or "Ċ" + "Ġ" * 4 in vocab
    assert "Ċĉ" in vocab
    assert not any(len(t) > 1 and t.isdigit() for t in vocab)
    assert tok.encode("1024").tokens == ["1", "0", "2", "4"]


def test_saved_files_and_autotokenizer(trained: tuple[Tokenizer, Path]) -> None:
    _, out = trained
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["eos_token"] == "<eos>" and cfg["pad_token"] == "<pad>"
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    auto = AutoTokenizer.from_pretrained(str(out))
    assert (auto.pad_token_id, auto.eos_token_id, auto.bos_token_id, auto.unk_token_id) == (0, 1, 2, 3)
    ids = auto(PY, add_special_tokens=True)["input_ids"]
    assert ids[0] != auto.bos_token_id and ids[-1] != auto.eos_token_id
    assert auto.decode(ids) == PY
    fast = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert fast.convert_tokens_to_ids("<fim_middle>") == SPECIAL_TOKENS.index("<fim_middle>")
    loaded = tk.load(out)
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.decode(loaded(JS)["input_ids"]) == JS
    pretrained = PreTrainedTokenizerFast.from_pretrained(str(out))
    assert (pretrained.pad_token_id, pretrained.eos_token_id) == (0, 1)


def test_sample_and_compression(tmp_path: Path, trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as fh:
        for i in range(200):
            lang = ["python", "javascript", "go"][i % 3]
            text = [PY, JS, GO][i % 3] + f"# {i}\n"
            fh.write(json.dumps({"text": text, "language": lang}) + "\n")
    texts, held, sizes = tk.sample_corpus(corpus, sample_mb=0.01)
    assert 0 < sum(len(t) for t in texts) <= 12_000
    assert set(sizes) == {"python", "javascript", "go"}
    report = tk.compression(tok, {"python": [PY], "go": [GO]})
    assert report["python"]["roundtrip"] and report["python"]["chars_per_token"] > 1.0
