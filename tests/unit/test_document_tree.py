"""DocumentTree: LSP edits, offsets and incremental parsing."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import tree_sitter
from lsprotocol import types

from dg_lsp.languages import detect_language, get_parser
from dg_lsp.syntax import DocumentTree
from dg_lsp.syntax.treeutil import count_errors

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CODE_FIXTURES = sorted(p for p in FIXTURES.glob("*/*") if p.parent.name != "text" and p.suffix != ".json")
PIECES = ["a", "é", "中", "😀", "\n", "\r\n", " ", "(", ")", "{", "}", "x = 1\n", "return y;\n", "\t", "  # c\n"]


def _pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def _rng(start: types.Position, end: types.Position) -> types.Range:
    return types.Range(start=start, end=end)


def _nodes(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    out = [node]
    for child in node.children:
        out.extend(_nodes(child))
    return out


def test_fixtures_cover_every_language_and_parse_cleanly() -> None:
    languages = {detect_language(str(p), None) for p in CODE_FIXTURES}
    assert languages == {"python", "javascript", "typescript", "tsx", "go", "rust", "c", "cpp", "java", "lua", "bash"}
    for path in CODE_FIXTURES:
        text = path.read_text()
        assert 30 <= text.count("\n") <= 80, path
        doc = DocumentTree(text, detect_language(str(path), None))
        assert doc.tree is not None
        assert doc.error_count() == 0, path


@pytest.mark.parametrize("path", CODE_FIXTURES, ids=lambda p: p.parent.name)
def test_random_edits_match_full_reparse(path: Path) -> None:
    language = detect_language(str(path), None)
    assert language is not None
    doc = DocumentTree(path.read_text(), language)
    rng = random.Random(path.name)
    mismatched_with_errors = 0
    for _ in range(40):
        text = doc.text
        start = rng.randint(0, len(text))
        end = min(len(text), start + rng.choice([0, 0, 1, 3, 12]))
        insert = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3)))
        change = _rng(doc.position_at(start), doc.position_at(end))
        expected = text[: doc.offset_at(change.start)] + insert + text[doc.offset_at(change.end) :]
        doc.apply_change(change, insert)
        assert doc.text == expected
        fresh = DocumentTree(doc.text, language)
        assert doc.source == fresh.source == doc.text.encode("utf-8")
        assert doc.tree is not None and fresh.tree is not None
        assert doc.line_count == fresh.line_count
        for node in _nodes(doc.tree.root_node):
            # byte ranges and points of the incremental tree agree with the text
            assert node.start_point == fresh.point_at(fresh.str_offset(node.start_byte))
            assert node.end_point == fresh.point_at(fresh.str_offset(node.end_byte))
        if str(doc.tree.root_node) != str(fresh.tree.root_node):
            # tree-sitter's error recovery may depend on edit history; clean code may not
            assert fresh.error_count() > 0
            mismatched_with_errors += 1
        assert doc.error_count() == count_errors(doc.tree.root_node)
    assert mismatched_with_errors <= 4


def test_clean_incremental_edits_give_identical_trees() -> None:
    doc = DocumentTree("def f(x):\n    return x\n", "python")
    edits = [
        (_rng(_pos(1, 12), _pos(1, 12)), " + 1"),
        (_rng(_pos(2, 0), _pos(2, 0)), "\ndef g(s='中😀é'):\n    return f(len(s))\n"),
        (_rng(_pos(3, 8), _pos(3, 14)), "'é'"),
        (_rng(_pos(0, 4), _pos(0, 5)), "ff"),
    ]
    for change, insert in edits:
        doc.apply_change(change, insert)
        fresh = get_parser("python").parse(doc.text.encode())
        assert doc.tree is not None and fresh is not None
        assert doc.error_count() == 0
        assert str(doc.tree.root_node) == str(fresh.root_node)
    assert doc.text == "def ff(x):\n    return x + 1\n\ndef g(s='é'):\n    return f(len(s))\n"


def test_utf16_positions() -> None:
    doc = DocumentTree("a😀b中é\nx", None)
    assert doc.offset_at(_pos(0, 0)) == 0
    assert doc.offset_at(_pos(0, 1)) == 1
    assert doc.offset_at(_pos(0, 3)) == 2  # after the surrogate pair
    assert doc.offset_at(_pos(0, 2)) == 1  # inside the pair: rounds down
    assert doc.offset_at(_pos(0, 5)) == 4
    assert doc.position_at(4) == _pos(0, 5)
    assert doc.byte_offset(2) == 5
    assert doc.str_offset(5) == 2
    assert doc.str_offset(3) == 1  # inside the emoji's bytes: rounds down
    assert doc.byte_offset(doc.offset_at(_pos(1, 1))) == len("a😀b中é\nx".encode())


def test_other_position_encodings() -> None:
    utf8 = DocumentTree("é😀x", None, position_encoding="utf-8")
    assert utf8.offset_at(_pos(0, 6)) == 2
    assert utf8.position_at(2) == _pos(0, 6)
    utf32 = DocumentTree("é😀x", None, position_encoding="utf-32")
    assert utf32.offset_at(_pos(0, 2)) == 2


def test_clamping_and_errors() -> None:
    doc = DocumentTree("ab\ncd\n", "python")
    assert doc.offset_at(_pos(0, 99)) == 2  # past the line end: line end
    assert doc.offset_at(_pos(99, 0)) == len(doc.text)  # past the last line: document end
    with pytest.raises(ValueError):  # lsprotocol or DocumentTree rejects it
        doc.offset_at(_pos(-1, 0))
    with pytest.raises(ValueError, match="negative"):
        doc.offset_at(SimpleNamespace(line=0, character=-2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="after its end"):
        doc.apply_change(_rng(_pos(1, 1), _pos(0, 1)), "x")
    doc.apply_change(_rng(_pos(1, 0), _pos(50, 0)), "z")  # clamped end
    assert doc.text == "ab\nz"


def test_line_breaks_crlf_and_lone_cr() -> None:
    doc = DocumentTree("a\r\nb\rc\nd", "python")
    assert [doc.line_text(i) for i in range(doc.line_count)] == ["a", "b", "c", "d"]
    doc.apply_change(_rng(_pos(0, 1), _pos(0, 1)), "\r")  # "a\r\r\n": an extra empty line
    assert [doc.line_text(i) for i in range(doc.line_count)] == ["a", "", "b", "c", "d"]
    doc.apply_change(_rng(_pos(1, 0), _pos(2, 0)), "")  # joins the CR and the following text
    assert doc.text == "a\rb\rc\nd"
    assert doc.line_count == 4
    fresh = get_parser("python").parse(doc.text.encode())
    assert doc.tree is not None and fresh is not None
    assert str(doc.tree.root_node) == str(fresh.root_node)
    # "\r" then "\n" inserted next to it merge into one CRLF break
    doc.apply_change(_rng(_pos(1, 0), _pos(1, 0)), "\n")
    assert doc.text == "a\r\nb\rc\nd" and doc.line_count == 4


def test_weird_text_does_not_crash() -> None:
    text = "x = '\x00'\n\ud800 = 1\n\udfff\ny = '😀'\r\n"
    doc = DocumentTree(text, "python")
    assert doc.tree is not None
    assert doc.error_count() > 0
    doc.apply_change(_rng(_pos(1, 0), _pos(1, 1)), "z")
    assert doc.text.startswith("x = '\x00'\nz = 1")
    doc.apply_change(_rng(_pos(0, 0), _pos(0, 0)), "\ud83d")  # half a pair from a client
    assert doc.text[0] == "\ud83d"
    assert doc.byte_offset(1) == 3


def test_full_replacement_and_apply_changes() -> None:
    doc = DocumentTree("old", "go")
    doc.apply_changes(
        [
            types.TextDocumentContentChangeWholeDocument(text="package m\n\nfunc f() {}\n"),
            types.TextDocumentContentChangePartial(range=_rng(_pos(2, 10), _pos(2, 10)), text="\n\treturn\n"),
        ]
    )
    assert doc.text == "package m\n\nfunc f() {\n\treturn\n}\n"
    assert doc.error_count() == 0


def test_unsupported_language_has_no_tree() -> None:
    doc = DocumentTree("plain text\n", None)
    assert doc.tree is None and doc.language is None
    assert doc.error_count() == 0
    doc.apply_change(_rng(_pos(0, 6), _pos(0, 10)), "words")
    assert doc.text == "plain words\n"
    assert DocumentTree("x", "cobol").tree is None


def test_five_megabyte_file_edits_defer_the_reparse() -> None:
    unit = "def f(x):\n    return x + 1  # é\n\n"
    text = unit * (5_000_000 // len(unit))
    doc = DocumentTree(text, "python")
    middle = doc.line_count // 2
    assert doc.tree is not None  # first access parses
    for i in range(5):
        doc.apply_change(_rng(_pos(middle + i, 4), _pos(middle + i, 4)), "😀")
    assert doc._dirty  # edits only edit the tree; nothing reparsed yet
    assert doc.text.count("😀") == 5
    assert doc.byte_offset(len(doc.text)) == len(doc.source)
    tree = doc.tree  # one incremental reparse for the whole burst
    assert tree is not None and tree.root_node.end_byte == len(doc.source)
    assert doc.node_at(doc.text.index("😀")) is not None


def test_minified_single_line() -> None:
    text = "var a=1,é=[2,3];" * 125_000  # ~2 MB, one line
    doc = DocumentTree(text, "javascript")
    assert doc.line_count == 1
    col16 = doc.position_at(1_000_000).character
    doc.apply_change(_rng(_pos(0, col16), _pos(0, col16)), "中")
    assert doc.text[1_000_000] == "中"
    assert doc.position_at(1_000_001) == _pos(0, col16 + 1)


def test_snapshot_parses_off_the_owner_and_gives_the_tree_back() -> None:
    from lsprotocol import types as lsp

    doc = DocumentTree("def f():\n    return 1\n", "python")
    first = doc.snapshot()
    tree = first.tree()
    assert tree is not None and tree.root_node.type == "module"
    first.give_back()
    doc.apply_change(lsp.Range(start=lsp.Position(1, 11), end=lsp.Position(1, 12)), "2")
    stale = doc.snapshot()
    doc.apply_change(lsp.Range(start=lsp.Position(1, 11), end=lsp.Position(1, 12)), "3")
    parsed = stale.tree()
    assert parsed is not None and parsed.root_node.text == b"def f():\n    return 2\n"
    stale.give_back()  # the document moved on: its own tree must not be replaced
    current = doc.tree
    assert current is not None and current.root_node.text == b"def f():\n    return 3\n"


def test_snapshot_without_grammar_has_no_tree() -> None:
    doc = DocumentTree("plain words\n", None)
    assert doc.snapshot().tree() is None
