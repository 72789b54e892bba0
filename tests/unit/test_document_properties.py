"""Property-based tests (hypothesis) of the document store against a plain reference model.

The reference is deliberately naive: the document is a Python string, lines are split with
``str.splitlines``-like LSP rules (``\\r\\n``, ``\\r``, ``\\n``), a position's character counts
UTF-16 code units and is clamped to its line (rounding down inside a surrogate pair), and an
edit is string slicing. :class:`DocumentTree` (incremental line tables, byte offsets, tree-sitter
edits) must agree with it after any sequence of edits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types

from dg_lsp.syntax.context import build_context
from dg_lsp.syntax.document_tree import DocumentTree

settings.register_profile("dg-lsp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dg-lsp")

#: Characters that stress the bookkeeping: line breaks of all three kinds, multi-byte
#: UTF-8, astral characters (two UTF-16 units), combining marks, tabs, brackets.
ALPHABET = st.sampled_from(
    list("ab xy_=:()[]{}'\"#\t") + ["\n", "\r", "\r\n", "é", "ß", "中", "😀", "𝔘", "\u0301", "def ", "    ", "return "]
)
TEXT = st.lists(ALPHABET, max_size=60).map("".join)
BREAK = re.compile(r"\r\n|\r|\n")


class Reference:
    """The naive model of an LSP document."""

    def __init__(self, text: str) -> None:
        self.text = text

    def lines(self) -> list[tuple[int, int]]:
        """(start, content end) of every line."""
        spans, start = [], 0
        for match in BREAK.finditer(self.text):
            spans.append((start, match.start()))
            start = match.end()
        spans.append((start, len(self.text)))
        return spans

    def offset(self, line: int, character: int) -> int:
        lines = self.lines()
        if line >= len(lines):
            return len(self.text)
        start, end = lines[line]
        units = 0
        for index in range(start, end):
            width = 2 if ord(self.text[index]) > 0xFFFF else 1
            if units + width > character:
                return index
            units += width
        return end

    def position(self, offset: int) -> tuple[int, int]:
        """The last line starting at or before ``offset``; inside a line break, that line's end."""
        lines = self.lines()
        number = max(i for i, (start, _) in enumerate(lines) if start <= offset)
        start, end = lines[number]
        column = min(offset, end)
        return number, sum(2 if ord(c) > 0xFFFF else 1 for c in self.text[start:column])

    def edit(self, start: int, end: int, new_text: str) -> None:
        self.text = self.text[:start] + new_text + self.text[end:]


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


positions = st.tuples(st.integers(0, 12), st.integers(0, 40))


@given(TEXT, st.lists(positions, max_size=10))
def test_positions_map_to_the_reference_offsets(text: str, probes: list[tuple[int, int]]) -> None:
    doc, ref = DocumentTree(text), Reference(text)
    assert doc.line_count == len(ref.lines())
    for line, character in probes:
        assert doc.offset_at(pos(line, character)) == ref.offset(line, character)


@given(TEXT)
def test_offsets_round_trip_through_positions(text: str) -> None:
    doc, ref = DocumentTree(text), Reference(text)
    for offset in range(len(text) + 1):
        position = doc.position_at(offset)
        assert (position.line, position.character) == ref.position(offset)
        assert doc.byte_offset(offset) == len(text[:offset].encode("utf-8", "surrogatepass"))
        back = doc.offset_at(position)
        inside_break = 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n"
        inside_pair = offset < len(text) and 0xDC00 <= ord(text[offset]) <= 0xDFFF
        if not inside_break and not inside_pair:
            assert back == offset


@dataclass(frozen=True)
class Edit:
    start: tuple[int, int]
    end: tuple[int, int]
    text: str


edits = st.builds(Edit, positions, positions, TEXT)


@pytest.mark.parametrize("language", [None, "python"])
@given(initial=TEXT, changes=st.lists(edits, min_size=1, max_size=25))
def test_incremental_edits_match_the_reference(language: str | None, initial: str, changes: list[Edit]) -> None:
    doc, ref = DocumentTree(initial, language), Reference(initial)
    for change in changes:
        start = ref.offset(*change.start)
        end = ref.offset(*change.end)
        if start > end:  # a reversed range is an error and changes nothing
            with pytest.raises(ValueError):
                doc.apply_change(types.Range(start=pos(*change.start), end=pos(*change.end)), change.text)
        else:
            doc.apply_change(types.Range(start=pos(*change.start), end=pos(*change.end)), change.text)
            ref.edit(start, end, change.text)
        assert doc.text == ref.text
        assert doc.line_count == len(ref.lines())
    for number, (start, end) in enumerate(ref.lines()):
        assert doc.line_text(number) == ref.text[start:end]
    assert doc.source == ref.text.encode("utf-8", "surrogatepass")
    if language is not None:  # the incrementally edited tree equals a fresh parse
        fresh = DocumentTree(ref.text, language)
        assert doc.tree is not None and fresh.tree is not None
        assert str(doc.tree.root_node) == str(fresh.tree.root_node)


@given(initial=TEXT, changes=st.lists(edits, min_size=1, max_size=10))
def test_a_full_replacement_resets_everything(initial: str, changes: list[Edit]) -> None:
    doc = DocumentTree(initial, "python")
    for change in changes:
        doc.apply_change(None, change.text)
        fresh = DocumentTree(change.text, "python")
        assert doc.text == change.text and doc.line_count == fresh.line_count
        assert doc.tree is not None and fresh.tree is not None
        assert str(doc.tree.root_node) == str(fresh.tree.root_node)


def char_tokens(text: str) -> int:
    """A deterministic token counter (one token per 3 characters, rounded up)."""
    return -(-len(text) // 3)


SOURCE_LINES = st.lists(
    st.sampled_from(
        ["def f(x):", "    return x + 1", "class A:", "    y = [1, 2,", "        3]", "", "# 😀 comment",
         "s = 'a\\nb'", "if x:\r", "    pass", "x = 1; y = 2; z = f(x) + f(y) * 3 - 4 / 5", "\t", "中文 = 1"]
    ),
    max_size=40,
)


@pytest.mark.parametrize("language", [None, "python"])
@given(lines=SOURCE_LINES, where=st.floats(0, 1, allow_subnormal=False), budget=st.integers(1, 120))
@settings(max_examples=60)
def test_context_is_a_verbatim_window_around_the_cursor(language: str | None, lines: list[str], where: float, budget: int) -> None:
    text = "\n".join(lines)
    cursor = int(where * len(text))
    doc = DocumentTree(text, language)
    context = build_context(text, doc.tree, language, cursor, budget, char_tokens)
    assert context.prefix_start_offset <= context.cursor_offset == cursor <= context.suffix_end_offset
    assert context.prefix == text[context.prefix_start_offset : cursor]
    assert context.suffix == text[cursor : context.suffix_end_offset]
    # The window fits the budget (counted the way the engine counts it: each side separately).
    assert char_tokens(context.prefix) + char_tokens(context.suffix) <= budget + 2
    # A budget that covers the whole file keeps all of it but surrounding blank space.
    whole = build_context(text, doc.tree, language, cursor, char_tokens(text) + 4, char_tokens)
    assert text[: whole.prefix_start_offset].strip() == "" and text[whole.suffix_end_offset :].strip() == ""
