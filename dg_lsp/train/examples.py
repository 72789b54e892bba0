"""Training examples made exactly the way the server makes requests.

A source file gets a hole drawn the way editors make them (:func:`dg_lsp.syntax.sample_hole`),
the context around the hole is cut by the server's own :func:`dg_lsp.syntax.build_context`, and
the ids come from :mod:`dg_lsp.canvas` — the same layout, canvas lengths and end-of-middle
padding the engine uses at inference time.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from dg_lsp.canvas import HoleKind, LayoutTokens, canvas_length_for, canvas_target, encoder_ids
from dg_lsp.languages import get_parser, has_grammar
from dg_lsp.syntax import build_context, sample_hole

#: Share of holes drawn in the editor's "new line" layout (see :func:`editor_line_hole`).
EDITOR_LINE_SHARE = 0.35
#: Of those, the share that spans 2-4 lines instead of one.
EDITOR_MULTILINE_SHARE = 0.3


def _line_spans(text: str) -> list[tuple[int, int]]:
    """(line start, content end) of every non-blank line (start at column 0)."""
    out: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if body.strip():
            out.append((pos, pos + len(body.rstrip())))
        pos += len(line)
    return out


def editor_line_hole(text: str, rng: random.Random, count: int = 1) -> tuple[int, int] | None:
    """A hole of ``count`` non-blank lines (fewer at the end of the file) *including* their indentation.

    Removing it leaves an empty line with the cursor at column 0 — the state of an editor
    where someone opened a new line and waits for the model to write it, indentation and all
    (the HumanEval infilling layout). The line break after the hole stays in the suffix.
    """
    spans = _line_spans(text)
    if not spans:
        return None
    index = rng.randrange(len(spans))
    last = min(len(spans) - 1, index + count - 1)
    return spans[index][0], spans[last][1]


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
        editor_line_share: float = EDITOR_LINE_SHARE,
    ) -> None:
        self._tokenizer = tokenizer
        self._layout = layout
        self._context_tokens = context_tokens
        self._max_canvas = max_canvas
        self._max_hole_chars = max_hole_chars
        self._window_chars = window_chars
        self._editor_line_share = editor_line_share

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
        span = None
        if rng.random() < self._editor_line_share:
            count = rng.randint(2, 4) if rng.random() < EDITOR_MULTILINE_SHARE else 1
            span = editor_line_hole(text, rng, count)
            if span is not None and span[1] - span[0] > self._max_hole_chars:
                span = None
        if span is None:
            hole_start, hole_end, _ = sample_hole(text, language, tree, rng, max_chars=self._max_hole_chars)
        else:
            hole_start, hole_end = span
        middle = text[hole_start:hole_end]
        outside = text[:hole_start] + text[hole_end:]
        outside_tree = get_parser(language).parse(outside.encode("utf-8", "surrogatepass")) if language else None
        budget = rng.choice((self._context_tokens // 2, self._context_tokens, self._context_tokens))
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


# -- parallel example making (feeds a GPU) ------------------------------------------------------
_WORKER: tuple[ExampleMaker, list[SourceFile], list[float]] | None = None


def _init_worker(maker: ExampleMaker, files: list[SourceFile], weights: list[float]) -> None:
    global _WORKER
    _WORKER = (maker, files, weights)


def _chunk(seed: int, size: int = 64) -> list[Example]:
    assert _WORKER is not None
    maker, files, weights = _WORKER
    stream = maker.stream(files, weights, random.Random(seed))
    return [next(stream) for _ in range(size)]


def parallel_stream(
    maker: ExampleMaker, files: list[SourceFile], weights: list[float], seed: int, workers: int
) -> Iterator[Example]:
    """Endless examples made by ``workers`` processes (chunks of 64, seeds ``seed*1e6 + i``)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(maker, files, weights))
    seeds = (seed * 1_000_000 + i for i in itertools.count())
    try:
        for chunk in pool.imap(_chunk, seeds, chunksize=1):
            yield from chunk
    finally:
        pool.terminate()
