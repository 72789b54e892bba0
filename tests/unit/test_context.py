"""build_context: kinds, line-aligned cuts within budget, scope preference."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import tree_sitter

from dg_lsp.languages import detect_language, get_parser, has_grammar
from dg_lsp.syntax import CompletionKind, InfillContext, build_context, kind_at

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CURSORS: dict[str, list[dict[str, object]]] = json.loads((FIXTURES / "cursors.json").read_text())
HOLES = [(path, hole) for path, holes in CURSORS.items() for hole in holes]


def tokens(text: str) -> int:
    """A stand-in tokenizer: about 3 characters per token."""
    return math.ceil(len(text) / 3)


class CountingTokens:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        return tokens(text)


def _tree(text: str, language: str | None) -> tree_sitter.Tree | None:
    return get_parser(language).parse(text.encode()) if language and has_grammar(language) else None


def holed(path: str, hole: dict[str, object]) -> tuple[str, int, str | None]:
    """The fixture with the hole's text removed, the cursor offset, the language."""
    text = (FIXTURES / path).read_text()
    lines = text.split("\n")
    line, character, expected = int(str(hole["line"])), int(str(hole["character"])), str(hole["expected"])
    offset = sum(len(ln) + 1 for ln in lines[:line]) + character
    assert text[offset : offset + len(expected)] == expected
    return text[:offset] + text[offset + len(expected) :], offset, detect_language(path, None)


def build(text: str, offset: int, language: str | None, budget: int, count: Callable[[str], int] = tokens) -> InfillContext:
    return build_context(text, _tree(text, language), language, offset, budget, count)


def assert_whole_lines(ctx: InfillContext, text: str) -> None:
    start, end = ctx.prefix_start_offset, ctx.suffix_end_offset
    assert ctx.prefix == text[start : ctx.cursor_offset]
    assert ctx.suffix == text[ctx.cursor_offset : end]
    assert start == 0 or text[start - 1] in "\r\n"
    assert end == len(text) or text[end - 1] in "\r\n"


@pytest.mark.parametrize(("path", "hole"), HOLES, ids=[f"{p}:{h['kind']}" for p, h in HOLES])
def test_kind_at_fixture_cursors(path: str, hole: dict[str, object]) -> None:
    text, offset, language = holed(path, hole)
    expected = CompletionKind[str(hole["kind"])]
    assert kind_at(text, None, language, offset) is expected
    ctx = build(text, offset, language, 4096)
    assert ctx.kind is expected
    assert ctx.language == language


@pytest.mark.parametrize(("path", "hole"), HOLES, ids=[f"{p}:{h['kind']}" for p, h in HOLES])
@pytest.mark.parametrize("budget", [24, 60, 150, 400])
def test_cuts_are_whole_lines_within_budget(path: str, hole: dict[str, object], budget: int) -> None:
    text, offset, language = holed(path, hole)
    counter = CountingTokens()
    ctx = build(text, offset, language, budget, counter)
    assert tokens(ctx.prefix) + tokens(ctx.suffix) <= budget
    assert ctx.cursor_offset == offset
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    if tokens(text[line_start:offset]) + tokens(text[offset : line_end + 1]) <= budget:
        assert_whole_lines(ctx, text)
    lines = text.count("\n") + 1
    assert counter.calls <= 6 * math.log2(lines) + 12


@pytest.mark.parametrize("path", sorted(CURSORS), ids=str)
def test_generous_budget_takes_whole_file(path: str) -> None:
    text, offset, language = holed(path, CURSORS[path][0])
    ctx = build(text, offset, language, 100_000)
    assert ctx.prefix + ctx.suffix == text


def test_budget_split_is_roughly_three_to_one() -> None:
    text = "".join(f"value_{i} = {i}\n" for i in range(400))
    offset = text.index("value_200 = ")
    ctx = build(text, offset, "python", 400)
    prefix, suffix = tokens(ctx.prefix), tokens(ctx.suffix)
    assert prefix + suffix <= 400
    assert 0.6 <= prefix / (prefix + suffix) <= 0.85


def test_unused_share_moves_to_the_other_side() -> None:
    text = "".join(f"value_{i} = {i}\n" for i in range(400))
    near_end = build(text, text.index("value_396 = "), "python", 400)
    assert tokens(near_end.prefix) > 300  # suffix is short: prefix gets its share
    near_start = build(text, text.index("value_3 = "), "python", 400)
    assert tokens(near_start.suffix) > 300


def test_enclosing_scope_is_kept_whole() -> None:
    body = "".join(f"    step_{i} = compute({i})\n" for i in range(40))
    text = "import os\n\n" + "".join(f"CONSTANT_{i} = {i}\n" for i in range(60)) + "\n\ndef work():\n    |\n" + body + "\n\nTAIL = 1\n"
    offset = text.index("|")
    text = text.replace("|", "pass")
    function = text[text.index("def work") : text.index("\n\n\nTAIL")]
    budget = tokens(function) + 40  # fits the function, but not with a 3:1 split
    ctx = build(text, offset, "python", budget)
    assert ctx.prefix_start_offset <= text.index("def work")
    assert ctx.suffix_end_offset >= text.index("\n\n\nTAIL")  # the function's end is included
    assert tokens(ctx.prefix) + tokens(ctx.suffix) <= budget


def test_prefix_does_not_start_inside_a_multiline_string() -> None:
    doc = '    """' + "".join(f"\n    documentation line {i}" for i in range(30)) + '\n    """\n'
    text = "def f():\n" + doc + "".join(f"    x_{i} = {i}\n" for i in range(10)) + "    return |\n"
    offset = text.index("|")
    text = text.replace("|", "")
    for budget in range(60, 200, 7):
        ctx = build(text, offset, "python", budget)
        assert ctx.prefix.count('"""') in (0, 2), budget


def test_without_tree_falls_back_to_lines() -> None:
    text = (FIXTURES / "text" / "notes.txt").read_text()
    offset = text.index("Lee profiles") + 4
    ctx = build_context(text, None, None, offset, 40, tokens)
    assert_whole_lines(ctx, text)
    assert tokens(ctx.prefix) + tokens(ctx.suffix) <= 40
    assert ctx.kind is CompletionKind.REST_OF_LINE


def test_indent_and_line_fields() -> None:
    text = "class A:\n    def f(self):\n        \n\nx = 1\n"
    offset = text.index("        \n") + 8
    ctx = build(text, offset, "python", 200)
    assert ctx.kind is CompletionKind.BLOCK
    assert ctx.indent == "        "
    assert ctx.line_prefix == "        " and ctx.line_suffix == ""
    go = "package m\n\nfunc f() {\n\n}\n"
    ctx = build(go, go.index("{\n") + 2, "go", 200)
    assert ctx.kind is CompletionKind.BLOCK and ctx.indent == "\t" and ctx.indent_unit == "\t"
    crlf = "int f() {\r\n    return 1;\r\n}\r\n"
    ctx = build(crlf, crlf.index("1;"), "c", 200)
    assert ctx.newline == "\r\n" and ctx.kind is CompletionKind.REST_OF_LINE


def test_minified_line_is_cut_by_characters_near_the_cursor() -> None:
    text = "var a=1,b=[2,3];function f(x){return x*2}" * 50_000  # ~2 MB, one line
    offset = len(text) // 2
    counter = CountingTokens()
    ctx = build(text, offset, "javascript", 1000, counter)
    assert tokens(ctx.prefix) + tokens(ctx.suffix) <= 1000
    assert len(ctx.prefix) > 2000 and len(ctx.suffix) > 400
    assert ctx.prefix == text[ctx.prefix_start_offset : offset]
    assert counter.calls < 80


def test_five_megabyte_file_is_bounded() -> None:
    unit = 'def helper_{0}(x):\n    """Doc é."""\n    return x + {0}\n\n\n'
    text = "".join(unit.format(i) for i in range(80_000))
    assert len(text) > 4_500_000
    tree = get_parser("python").parse(text.encode())
    offset = text.index("return x + 40000") + 9
    counter = CountingTokens()
    ctx = build_context(text, tree, "python", offset, 2048, counter)
    assert tokens(ctx.prefix) + tokens(ctx.suffix) <= 2048
    assert_whole_lines(ctx, text)
    assert ctx.kind is CompletionKind.REST_OF_LINE
    assert counter.calls < 60


def test_degenerate_inputs() -> None:
    assert build("", 0, "python", 100).prefix == ""
    ctx = build("x = 1\n", 99, "python", 100)
    assert ctx.cursor_offset == 6 and ctx.suffix == ""
    ctx = build("x = 1\n", 3, "python", 0)
    assert ctx.prefix == "" and ctx.suffix == ""
