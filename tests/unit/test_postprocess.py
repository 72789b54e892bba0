"""clean_completion: overlap trimming, syntax stop, re-indentation, rejection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dg_lsp.languages import detect_language, get_parser, has_grammar
from dg_lsp.syntax import CompletionKind, InfillContext, build_context, clean_completion, parse_is_not_worse

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CURSORS: dict[str, list[dict[str, object]]] = json.loads((FIXTURES / "cursors.json").read_text())
HOLES = [(path, hole) for path, holes in CURSORS.items() for hole in holes]
IDS = [f"{p}:{h['kind']}" for p, h in HOLES]


def tokens(text: str) -> int:
    return math.ceil(len(text) / 3)


def context(source: str, language: str | None, budget: int = 2048, offset: int | None = None) -> InfillContext:
    """Context for ``source`` with the cursor at ``offset`` or else at its ``|``."""
    if offset is None:
        offset = source.index("|")
        source = source.replace("|", "", 1)
    text = source
    tree = get_parser(language).parse(text.encode()) if language and has_grammar(language) else None
    return build_context(text, tree, language, offset, budget, tokens)


def fixture_context(path: str, hole: dict[str, object]) -> tuple[InfillContext, str, str | None]:
    text = (FIXTURES / path).read_text()
    lines = text.split("\n")
    offset = sum(len(ln) + 1 for ln in lines[: int(str(hole["line"]))]) + int(str(hole["character"]))
    expected = str(hole["expected"])
    holed = text[:offset] + text[offset + len(expected) :]
    language = detect_language(path, None)
    return context(holed, language, offset=offset), expected, language


@pytest.mark.parametrize(("path", "hole"), HOLES, ids=IDS)
def test_exact_completion_survives(path: str, hole: dict[str, object]) -> None:
    ctx, expected, language = fixture_context(path, hole)
    assert clean_completion(expected, ctx, language) == expected


@pytest.mark.parametrize(("path", "hole"), HOLES, ids=IDS)
def test_regenerated_suffix_is_trimmed(path: str, hole: dict[str, object]) -> None:
    ctx, expected, language = fixture_context(path, hole)
    assert clean_completion(expected + ctx.suffix[:300], ctx, language) == expected


@pytest.mark.parametrize(("path", "hole"), HOLES, ids=IDS)
def test_text_already_after_the_cursor_is_rejected(path: str, hole: dict[str, object]) -> None:
    ctx, _, language = fixture_context(path, hole)
    if ctx.line_suffix.strip():
        assert clean_completion(ctx.line_suffix, ctx, language) is None
        assert clean_completion(ctx.line_suffix[:3], ctx, language) is None
    if ctx.kind is not CompletionKind.REST_OF_LINE:
        upcoming = next(ln for ln in ctx.suffix.split("\n") if ln.strip())
        assert clean_completion(upcoming.strip(), ctx, language) is None
    assert clean_completion("", ctx, language) is None
    assert clean_completion("  \n\n", ctx, language) is None


def test_rest_of_line_closing_brackets() -> None:
    ctx = context('def f():\n    print(|)\n', "python")
    assert ctx.kind is CompletionKind.REST_OF_LINE
    assert clean_completion('"hi")', ctx, "python") == '"hi"'
    assert clean_completion('"hi") + 1', ctx, "python") == '"hi"'
    ctx = context("def f():\n    x = foo(|)\n", "python")
    assert clean_completion("bar())", ctx, "python") == "bar()"
    assert clean_completion("bar()", ctx, "python") == "bar()"
    assert clean_completion(")", ctx, "python") is None
    ctx = context("x = [1, 2|]\n", "python")
    assert clean_completion(", 3]", ctx, "python") == ", 3"


def test_rest_of_line_stops_at_end_of_line() -> None:
    ctx = context("def f():\n    x = |\n    return x\n", "python")
    assert clean_completion("compute(1, 2)\n    y = 3\n", ctx, "python") == "compute(1, 2)"
    assert clean_completion("compute(1, 2)  \n", ctx, "python") == "compute(1, 2)"
    # a bracket the completion opens may span lines until it closes
    assert clean_completion("dict(\n        a=1,\n    )\n    z = 0", ctx, "python") == "dict(\n        a=1,\n    )"


def test_leading_repeat_of_the_prefix_is_dropped() -> None:
    ctx = context("def f(x):\n    return fo|\n", "python")
    assert clean_completion("return foo(x)", ctx, "python") == "o(x)"
    ctx = context("def f(x):\n    y = g(x)\n    |\n", "python")
    assert ctx.kind is CompletionKind.LINE
    assert clean_completion("y = g(x)\nreturn y", ctx, "python") == "return y"


def test_line_keeps_one_statement() -> None:
    ctx = context("def f():\n    a = 1\n    |\n    return a\n", "python")
    assert ctx.kind is CompletionKind.LINE
    assert clean_completion("b = 2\n    c = 3\n", ctx, "python") == "b = 2"
    assert clean_completion("b = g(\n        a,\n    )\n    c = 2", ctx, "python") == "b = g(\n        a,\n    )"
    compound = "if a:\n        a += 1\n    else:\n        a -= 1\n    return a\n"
    assert clean_completion(compound, ctx, "python") == "if a:\n        a += 1\n    else:\n        a -= 1"
    js = context("function f() {\n  let a = 1;\n  |\n  return a;\n}\n", "javascript")
    assert clean_completion("if (a) {\n    a++;\n  }\n  a--;", js, "javascript") == "if (a) {\n    a++;\n  }"
    assert clean_completion("a++;\n}\n", js, "javascript") == "a++;"


def test_block_stops_at_dedent() -> None:
    ctx = context("def f():\n    |\n\ndef g():\n    pass\n", "python")
    assert ctx.kind is CompletionKind.BLOCK
    out = clean_completion("x = 1\n    return x\n\ndef h():\n    pass\n", ctx, "python")
    assert out == "x = 1\n    return x"


def test_block_drops_closer_the_suffix_already_has() -> None:
    ctx = context("function f() {\n  |\n}\n", "javascript")
    assert ctx.kind is CompletionKind.BLOCK
    assert clean_completion("const a = 1;\n  return a;\n}\n\nfunction g() {}", ctx, "javascript") == "const a = 1;\n  return a;"
    open_ctx = context("function f() {\n  |\n", "javascript")
    assert clean_completion("const a = 1;\n  return a;\n}\n\nfunction g() {}", open_ctx, "javascript") == "const a = 1;\n  return a;\n}"
    lua = context("function f()\n  |\nend\n", "lua")
    assert clean_completion("local a = 1\n  return a\nend\n", lua, "lua") == "local a = 1\n  return a"


def test_block_after_opener_on_cursor_line() -> None:
    go = context("package m\n\nfunc f() int {|}\n", "go")
    assert go.kind is CompletionKind.BLOCK
    assert clean_completion("\n\treturn 1\n", go, "go") == "\n\treturn 1\n"
    py = context("def f():|\n\nx = 1\n", "python")
    assert py.kind is CompletionKind.BLOCK
    assert clean_completion("\n    return 1\n\nx = 1", py, "python") == "\n    return 1"
    assert clean_completion("\nreturn 1", py, "python") is None  # body not indented


def test_reindent_to_cursor_indentation() -> None:
    col0 = context("def f():\n|\n\ndef g():\n    pass\n", "python")
    assert col0.kind is CompletionKind.BLOCK and col0.indent == "    "
    assert clean_completion("x = 1\ny = 2\n", col0, "python") == "    x = 1\n    y = 2"
    doubled = context("def f():\n    |\n\ndef g():\n    pass\n", "python")
    assert clean_completion("    x = 1\n        y = 2\n", doubled, "python") == "x = 1\n    y = 2"


def test_tabs_versus_spaces_follow_the_file() -> None:
    go = context("package m\n\nfunc f() int {\n\t|\n}\n", "go")
    assert go.indent_unit == "\t"
    assert clean_completion("if true {\n    \treturn 1\n    }\n    return 0", go, "go") == "if true {\n\t\treturn 1\n\t}\n\treturn 0"
    py = context("def f():\n    a = 1\n    |\n    return a\n", "python")
    assert clean_completion("if a:\n\t\ta += 1", py, "python") == "if a:\n        a += 1"


def test_unbalanced_completions_are_rejected() -> None:
    ctx = context("def f():\n    x = |\n    return x\n", "python")
    assert clean_completion("foo(", ctx, "python") is None
    assert clean_completion("foo(1, [2)", ctx, "python") is None
    assert clean_completion("foo(1, 2)", ctx, "python") == "foo(1, 2)"
    c = context("int f(int a) {\n    return |\n}\n", "c")
    assert clean_completion("g(a;", c, "c") is None


def test_parse_worse_completions_are_rejected() -> None:
    ctx = context("def f():\n    a = 1\n    |\n    return a\n", "python")
    assert clean_completion("def", ctx, "python") is None
    assert clean_completion("a = = 2", ctx, "python") is None
    assert clean_completion("a = = 2", ctx, "python", parse_check=False) == "a = = 2"
    # mid-statement the document is already broken: finishing it is fine
    broken = context("def f():\n    x = foo(|\n    return x\n", "python")
    assert clean_completion("1, 2)", broken, "python") == "1, 2)"
    assert parse_is_not_worse("x = (", "x = (1)", "python")
    assert not parse_is_not_worse("x = 1\n", "x = 1 +\n", "python")
    assert parse_is_not_worse("anything", "any (thing", None)


def test_crlf_documents_get_crlf_completions() -> None:
    ctx = context("def f():\r\n    |\r\n\r\nx = 1\r\n", "python")
    assert ctx.newline == "\r\n"
    assert clean_completion("a = 1\r\n    return a\r\n", ctx, "python") == "a = 1\r\n    return a"


def test_plain_text_fallback() -> None:
    ctx = context("hello\nworld |\nagain\n", None)
    assert clean_completion("peace\nagain", ctx, None) == "peace"
    assert clean_completion("again", ctx, None) == "again"  # not at the cursor: fine
    assert clean_completion("\x00peace", ctx, None) == "peace"
