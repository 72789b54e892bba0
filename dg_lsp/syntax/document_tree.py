"""One open document: its text, UTF-8 source and incrementally parsed tree."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

import tree_sitter
from lsprotocol import types

from dg_lsp.languages import get_parser, has_grammar, new_parser
from dg_lsp.syntax.offsets import (
    column_to_units,
    encode,
    line_starts,
    units_to_column,
    utf8_len,
)
from dg_lsp.syntax.treeutil import count_errors

__all__ = ["DocumentTree", "TreeSnapshot"]

_LONE_CR = re.compile(r"\r(?!\n)")


class DocumentTree:
    """Text plus tree-sitter tree of one document, kept in sync with LSP edits.

    Positions use the LSP position encoding given at construction (UTF-16 by
    default). Invalid positions follow one rule: a negative line or character,
    or a range whose start lies after its end, raises ``ValueError``; a line
    past the end clamps to the end of the document and a character past the
    end of its line clamps to the line end (as the LSP specification asks).
    A character inside a surrogate pair rounds down to the pair's start.
    """

    def __init__(
        self,
        text: str = "",
        language: str | None = None,
        *,
        position_encoding: str = "utf-16",
    ) -> None:
        self.language = language if has_grammar(language) else None
        self.position_encoding = str(position_encoding)
        self._parser = new_parser(self.language) if self.language else None
        self._text = ""
        self._source = b""
        self._starts: list[int] = [0]
        self._bstarts: list[int] = [0]
        self._lone_cr = False
        self._tree: tree_sitter.Tree | None = None
        self._dirty = False
        self._errors: int | None = None
        self.set_text(text)

    # -- state ---------------------------------------------------------------
    @property
    def text(self) -> str:
        """Current document text."""
        return self._text

    @property
    def source(self) -> bytes:
        """Current text as UTF-8 (``surrogatepass``) bytes, as given to the parser."""
        return self._source

    @property
    def tree(self) -> tree_sitter.Tree | None:
        """Current syntax tree, ``None`` without a grammar.

        Reparsing is lazy: edits only ``Tree.edit`` the old tree, and the first
        access after them reparses once, incrementally. A burst of keystrokes
        thus costs one reparse (which tree-sitter makes O(n) with a small
        constant on multi-megabyte files), not one per change.
        """
        if self._dirty:
            self._tree = self._parse(self._tree)
            self._dirty = False
        return self._tree

    def snapshot(self) -> TreeSnapshot:
        """The current state, to be parsed off the event loop (see :class:`TreeSnapshot`)."""
        pending = self._tree.copy() if self._tree is not None else None
        return TreeSnapshot(self, self._text, self._source, self.language, pending, self._dirty)

    def adopt(self, snapshot: TreeSnapshot, tree: tree_sitter.Tree | None) -> None:
        """Keep a tree parsed from ``snapshot`` if the document has not changed since."""
        if snapshot.source is self._source and self._dirty and tree is not None:
            self._tree, self._dirty, self._errors = tree, False, None

    @property
    def line_count(self) -> int:
        """Number of lines (an empty document has one)."""
        return len(self._starts)

    def error_count(self) -> int:
        """Number of ERROR and MISSING nodes in the current tree (0 without one)."""
        tree = self.tree
        if tree is None:
            return 0
        if self._errors is None:
            self._errors = count_errors(tree.root_node)
        return self._errors

    # -- edits ---------------------------------------------------------------
    def set_text(self, text: str) -> None:
        """Replace the whole document and parse from scratch."""
        self._text = text
        self._source = encode(text)
        self._starts = [0, *line_starts(text)]
        if text.isascii():
            self._bstarts = list(self._starts)
        else:
            self._bstarts = [0]
            prev_s, prev_b = 0, 0
            for s in self._starts[1:]:
                prev_b += utf8_len(text[prev_s:s])
                prev_s = s
                self._bstarts.append(prev_b)
        self._lone_cr = _LONE_CR.search(text) is not None
        self._tree = None  # parsed lazily, on first access
        self._dirty = self._parser is not None
        self._errors = None

    def apply_change(self, range_: types.Range | None, new_text: str) -> None:
        """Apply one LSP content change; ``range_=None`` replaces everything.

        Edits the old tree with exact byte offsets and points, then reparses
        incrementally. See the class docstring for how bad ranges are handled.
        """
        if range_ is None:
            self.set_text(new_text)
            return
        start = self.offset_at(range_.start)
        end = self.offset_at(range_.end)
        if start > end:
            raise ValueError(f"range start {range_.start} lies after its end {range_.end}")
        start_byte = self.byte_offset(start)
        end_byte = self.byte_offset(end)
        start_point = self._point(start, start_byte)
        old_end_point = self._point(end, end_byte)

        text = self._text
        new_bytes = encode(new_text)
        self._text = text[:start] + new_text + text[end:]
        self._source = self._source[:start_byte] + new_bytes + self._source[end_byte:]
        self._update_lines(start, end, start_byte, end_byte, new_text, len(new_bytes))
        new_end = start + len(new_text)
        new_end_byte = start_byte + len(new_bytes)
        new_end_point = self._point(new_end, new_end_byte)

        if self._tree is not None:
            self._tree.edit(
                start_byte=start_byte,
                old_end_byte=end_byte,
                new_end_byte=new_end_byte,
                start_point=start_point,
                old_end_point=old_end_point,
                new_end_point=new_end_point,
            )
            self._dirty = True
        self._errors = None

    def apply_changes(self, changes: Iterable[types.TextDocumentContentChangeEvent]) -> None:
        """Apply the content changes of one ``didChange`` notification in order."""
        for change in changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                self.apply_change(change.range, change.text)
            else:
                self.apply_change(None, change.text)

    def _parse(self, old: tree_sitter.Tree | None) -> tree_sitter.Tree | None:
        self._errors = None
        if self._parser is None:
            return None
        if old is None:
            return self._parser.parse(self._source)
        return self._parser.parse(self._source, old)

    def _update_lines(
        self, start: int, end: int, start_byte: int, end_byte: int, new_text: str, new_len_bytes: int
    ) -> None:
        """Patch the line tables after ``text[start:end]`` became ``new_text``.

        Only starts in ``[start, start + len(new_text)]`` can change (a ``\\r``
        and ``\\n`` may join or split at either seam); the rest shift.
        """
        text = self._text
        seam_end = start + len(new_text)
        delta = len(new_text) - (end - start)
        delta_b = new_len_bytes - (end_byte - start_byte)
        keep = bisect.bisect_left(self._starts, start)
        tail = bisect.bisect_right(self._starts, end)
        lo = max(0, start - 1)
        hi = min(len(text), seam_end + 1)
        middle = [p for p in line_starts(text, lo, hi) if start <= p <= seam_end and p > 0]
        mid_b: list[int] = []
        prev, acc = start, start_byte
        for p in middle:
            acc += utf8_len(text[prev:p])
            prev = p
            mid_b.append(acc)
        self._starts = self._starts[:keep] + middle + [p + delta for p in self._starts[tail:]]
        self._bstarts = self._bstarts[:keep] + mid_b + [b + delta_b for b in self._bstarts[tail:]]
        if keep == 0:
            self._starts.insert(0, 0)
            self._bstarts.insert(0, 0)
        if not self._lone_cr and "\r" in text[lo:hi]:
            self._lone_cr = _LONE_CR.search(text, lo, hi + 1) is not None

    # -- conversions -----------------------------------------------------------
    def line_of(self, offset: int) -> int:
        """0-based line containing ``str`` offset ``offset`` (clamped)."""
        offset = min(max(offset, 0), len(self._text))
        return bisect.bisect_right(self._starts, offset) - 1

    def line_range(self, line: int) -> tuple[int, int]:
        """``str`` offsets of the start and content end (before the break) of ``line``."""
        start = self._starts[line]
        if line + 1 < len(self._starts):
            end = self._starts[line + 1] - 1
            if end > start and self._text[end] == "\n" and self._text[end - 1] == "\r":
                end -= 1
        else:
            end = len(self._text)
        return start, end

    def line_text(self, line: int) -> str:
        """Content of ``line`` without its line break."""
        start, end = self.line_range(line)
        return self._text[start:end]

    def offset_at(self, position: types.Position) -> int:
        """``str`` offset of an LSP position (clamped; negative raises ``ValueError``)."""
        if position.line < 0 or position.character < 0:
            raise ValueError(f"negative position {position.line}:{position.character}")
        if position.line >= len(self._starts):
            return len(self._text)
        start, end = self.line_range(position.line)
        line = self._text[start:end]
        return start + units_to_column(line, position.character, self.position_encoding)

    def position_at(self, offset: int) -> types.Position:
        """LSP position of a ``str`` offset (clamped to the document)."""
        line = self.line_of(offset)
        start, end = self.line_range(line)
        column = min(max(offset, start), end) - start
        units = column_to_units(self._text[start:end], column, self.position_encoding)
        return types.Position(line=line, character=units)

    def byte_offset(self, offset: int) -> int:
        """UTF-8 byte offset of a ``str`` offset (clamped)."""
        offset = min(max(offset, 0), len(self._text))
        line = bisect.bisect_right(self._starts, offset) - 1
        return self._bstarts[line] + utf8_len(self._text[self._starts[line] : offset])

    def str_offset(self, byte: int) -> int:
        """``str`` offset of a UTF-8 byte offset (clamped; rounds down inside a char)."""
        byte = min(max(byte, 0), len(self._source))
        line = bisect.bisect_right(self._bstarts, byte) - 1
        chunk = self._source[self._bstarts[line] : byte]
        return self._starts[line] + _decoded_len(chunk)

    def _point(self, offset: int, byte: int) -> tuple[int, int]:
        """tree-sitter point (row counts ``\\n`` only, column in bytes)."""
        if not self._lone_cr:
            line = bisect.bisect_right(self._starts, offset) - 1
            return line, byte - self._bstarts[line]
        row = self._text.count("\n", 0, offset)
        line_start = self._text.rfind("\n", 0, offset) + 1
        return row, byte - self.byte_offset(line_start)

    def point_at(self, offset: int) -> tuple[int, int]:
        """tree-sitter point of a ``str`` offset."""
        offset = min(max(offset, 0), len(self._text))
        return self._point(offset, self.byte_offset(offset))

    def node_at(self, offset: int) -> tree_sitter.Node | None:
        """Smallest node spanning ``str`` offset ``offset`` (``None`` without a tree)."""
        tree = self.tree
        if tree is None:
            return None
        byte = self.byte_offset(offset)
        return tree.root_node.descendant_for_byte_range(byte, byte)


class TreeSnapshot:
    """An immutable view of a document for a worker thread.

    ``tree()`` reparses incrementally (with the calling thread's parser) only if the
    document had unparsed edits, so a 5 MB file never blocks the event loop.
    """

    def __init__(
        self,
        owner: DocumentTree,
        text: str,
        source: bytes,
        language: str | None,
        pending: tree_sitter.Tree | None,
        dirty: bool,
    ) -> None:
        self._owner = owner
        self.text = text
        self.source = source
        self.language = language
        self._pending = pending
        self._dirty = dirty

    def tree(self) -> tree_sitter.Tree | None:
        """The parse of ``text`` (None without a grammar)."""
        if self.language is None:
            return None
        if self._dirty or self._pending is None:
            parser = get_parser(self.language)
            if self._pending is None:
                self._pending = parser.parse(self.source)
            else:
                self._pending = parser.parse(self.source, self._pending)
            self._dirty = False
        return self._pending

    def give_back(self) -> None:
        """Hand the parsed tree to the document, if it is still current."""
        if not self._dirty and self._pending is not None:
            self._owner.adopt(self, self._pending.copy())


def _decoded_len(chunk: bytes) -> int:
    """Characters fully contained in a UTF-8 ``chunk`` (a split tail is dropped)."""
    cut = len(chunk)
    back = 0
    while cut - back > 0 and back < 4 and (chunk[cut - back - 1] & 0xC0) == 0x80:
        back += 1
    lead = cut - back - 1
    if lead >= 0 and chunk[lead] >= 0xC0:
        need = 2 if chunk[lead] < 0xE0 else 3 if chunk[lead] < 0xF0 else 4
        if back + 1 < need:
            cut = lead
    return len(chunk[:cut].decode("utf-8", "surrogatepass"))
