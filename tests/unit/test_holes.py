"""sample_hole: bounds, determinism, mixture, and agreement with kind_at."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from dg_lsp.languages import detect_language, get_parser, has_grammar
from dg_lsp.syntax import CompletionKind, kind_at, sample_hole
from dg_lsp.syntax.holes import HOLE_MIX, NODE_MIX

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SOURCES = sorted(p for p in FIXTURES.glob("*/*") if p.suffix != ".json")


def _load(path: Path) -> tuple[str, str | None]:
    return path.read_text(), detect_language(str(path), None)


def test_mixtures_are_distributions() -> None:
    assert abs(sum(w for _, w in HOLE_MIX) - 1.0) < 1e-9
    assert abs(sum(w for _, w in NODE_MIX) - 1.0) < 1e-9
    assert dict(HOLE_MIX)["empty"] == pytest.approx(0.03)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.parent.name)
def test_holes_are_bounded_and_classified_like_the_server(path: Path) -> None:
    text, language = _load(path)
    tree = get_parser(language).parse(text.encode()) if language and has_grammar(language) else None
    kinds: Counter[CompletionKind] = Counter()
    for seed in range(150):
        start, end, kind = sample_hole(text, language, tree, random.Random(seed), max_chars=200)
        assert 0 <= start <= end <= len(text)
        assert end - start <= 200
        holed = text[:start] + text[end:]
        assert kind is kind_at(holed, None, language, start)
        kinds[kind] += 1
    assert kinds[CompletionKind.REST_OF_LINE] > 0 and kinds[CompletionKind.LINE] > 0
    if language is not None:
        assert kinds[CompletionKind.BLOCK] > 0


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.parent.name)
def test_deterministic_per_seed(path: Path) -> None:
    text, language = _load(path)
    tree = get_parser(language).parse(text.encode()) if language and has_grammar(language) else None
    first = [sample_hole(text, language, tree, random.Random(seed)) for seed in range(40)]
    again = [sample_hole(text, language, tree, random.Random(seed)) for seed in range(40)]
    assert first == again
    assert len(set(first)) > 20  # and not degenerate


def test_shared_rng_stream_is_reproducible() -> None:
    text, language = _load(FIXTURES / "go" / "queue.go")
    tree = get_parser("go").parse(text.encode())
    a, b = random.Random(7), random.Random(7)
    assert [sample_hole(text, language, tree, a) for _ in range(30)] == [
        sample_hole(text, language, tree, b) for _ in range(30)
    ]


def test_empty_share_and_node_holes() -> None:
    text, language = _load(FIXTURES / "python" / "shapes.py")
    tree = get_parser("python").parse(text.encode())
    holes = [sample_hole(text, language, tree, random.Random(seed)) for seed in range(1500)]
    empty = sum(1 for s, e, _ in holes if s == e)
    assert 0.005 < empty / len(holes) < 0.08
    spans = {text[s:e] for s, e, _ in holes}
    # whole function bodies and call arguments are among the node holes
    assert "return math.pi * self.radius ** 2" in spans
    assert any(span.startswith("total = 0.0\n") and span.endswith("return total") for span in spans)
    assert "shape.area()" in spans or "self.width - self.height" in spans


def test_max_chars_is_respected_even_when_small() -> None:
    text, language = _load(FIXTURES / "rust" / "stats.rs")
    tree = get_parser("rust").parse(text.encode())
    for seed in range(200):
        start, end, _ = sample_hole(text, language, tree, random.Random(seed), max_chars=5)
        assert end - start <= 5


def test_without_tree_and_degenerate_texts() -> None:
    text, language = _load(FIXTURES / "c" / "buffer.c")
    for seed in range(50):
        start, end, _ = sample_hole(text, language, None, random.Random(seed))
        assert 0 <= start <= end <= len(text)
    assert sample_hole("", "python", None, random.Random(0)) == (0, 0, CompletionKind.LINE)
    start, end, _ = sample_hole("\n\n  \n", None, None, random.Random(1))
    assert start == end
    one = "x" * 10_000
    start, end, _ = sample_hole(one, None, None, random.Random(3), max_chars=50)
    assert end - start <= 50
