"""Training examples made exactly the way the server makes requests.

A source file gets a hole drawn the way editors make them (:func:`dg_lsp.syntax.sample_hole`),
the context around the hole is cut by the server's own :func:`dg_lsp.syntax.build_context`, and
the ids come from :mod:`dg_lsp.canvas` — the same layout, canvas lengths and end-of-middle
padding the engine uses at inference time.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from dg_lsp.canvas import HoleKind, LayoutTokens, canvas_length_for, canvas_target, encoder_ids
from dg_lsp.languages import get_parser, has_grammar
from dg_lsp.syntax import build_context, sample_hole


@dataclass(frozen=True)
class Example:
    """One FIM example: encoder ids and the clean canvas."""

    prompt: list[int]
    canvas: list[int]
    middle_tokens: int
    kind: HoleKind
    language: str


@dataclass(frozen=True)
class SourceFile:
    """A corpus file."""

    text: str
    language: str


def read_corpus(path: Path, languages: set[str] | None = None) -> list[SourceFile]:
    """Load ``corpus.jsonl[.gz]`` (one JSON object per file with ``text`` and ``language``)."""
    files: list[SourceFile] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            language = str(record["language"])
            if languages is None or language in languages:
                files.append(SourceFile(text=str(record["text"]), language=language))
    return files


class ExampleMaker:
    """Draws holes from files and lays them out with the shared canvas layout."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        layout: LayoutTokens,
        context_tokens: int,
        max_canvas: int,
        max_hole_chars: int = 600,
        window_chars: int = 12_000,
    ) -> None:
        self._tokenizer = tokenizer
        self._layout = layout
        self._context_tokens = context_tokens
        self._max_canvas = max_canvas
        self._max_hole_chars = max_hole_chars
        self._window_chars = window_chars

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def _count(self, text: str) -> int:
        return len(self._ids(text))

    def make(self, source: SourceFile, rng: random.Random) -> Example | None:
        """One example from ``source`` (None when the drawn hole does not fit a canvas)."""
        text = source.text
        if len(text) > self._window_chars:  # a random window keeps parsing and cutting cheap
            start = rng.randrange(0, len(text) - self._window_chars)
            newline = text.find("\n", start)
            start = newline + 1 if 0 <= newline < start + 200 else start
            text = text[start : start + self._window_chars]
        language = source.language if has_grammar(source.language) else None
        tree = get_parser(language).parse(text.encode("utf-8", "surrogatepass")) if language else None
        hole_start, hole_end, _ = sample_hole(text, language, tree, rng, max_chars=self._max_hole_chars)
        middle = text[hole_start:hole_end]
        outside = text[:hole_start] + text[hole_end:]
        outside_tree = get_parser(language).parse(outside.encode("utf-8", "surrogatepass")) if language else None
        budget = rng.choice((self._context_tokens // 4, self._context_tokens // 2, self._context_tokens))
        context = build_context(outside, outside_tree, language, hole_start, budget, self._count)
        kind = HoleKind[context.kind.name]
        middle_ids = self._ids(middle)
        length = canvas_length_for(kind, self._max_canvas, needed=len(middle_ids))
        if len(middle_ids) >= length:
            return None
        prompt = encoder_ids(self._layout, self._ids(context.prefix), self._ids(context.suffix), source.language)
        return Example(
            prompt=prompt,
            canvas=canvas_target(self._layout, middle_ids, length),
            middle_tokens=len(middle_ids),
            kind=kind,
            language=source.language,
        )

    def stream(self, files: list[SourceFile], weights: list[float], rng: random.Random) -> Iterator[Example]:
        """Endless examples from ``files`` drawn with ``weights``."""
        while True:
            source = rng.choices(files, weights=weights, k=1)[0]
            example = self.make(source, rng)
            if example is not None:
                yield example
