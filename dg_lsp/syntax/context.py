"""Cut the prefix/suffix an infill request sends, within a token budget.

Cuts fall on line boundaries and prefer whole syntactic units: the largest
enclosing scope (function, class, block) that fits is kept entirely, the rest
of the budget extends outward line by line, and the final cut is snapped to
the start/end of a whole top-level sibling when that costs little. Only a
single line longer than the budget (minified code) is cut mid-line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tree_sitter

from dg_lsp.syntax.classify import expected_indent, kind_at
from dg_lsp.syntax.kinds import CompletionKind
from dg_lsp.syntax.lexical import line_bounds
from dg_lsp.syntax.offsets import LINE_BREAK, LocalByteMap
from dg_lsp.syntax.treeutil import ancestors_at

__all__ = ["CompletionKind", "InfillContext", "build_context"]

#: Characters looked at on each side of the cursor per token of budget.
CHARS_PER_TOKEN = 8
#: A structural snap may give up at most this share of the cut text.
SNAP_LOSS = 0.25
_OPAQUE = ("string", "comment", "heredoc", "template", "raw_string")


@dataclass(frozen=True)
class InfillContext:
    """Everything the engine and post-processing need about one request.

    ``prefix == text[prefix_start_offset:cursor_offset]`` and ``suffix ==
    text[cursor_offset:suffix_end_offset]``, verbatim (line breaks untouched).
    """

    prefix: str
    suffix: str
    kind: CompletionKind
    language: str | None
    #: Indentation the completion's lines should have (see ``expected_indent``).
    indent: str
    cursor_offset: int
    prefix_start_offset: int
    suffix_end_offset: int
    #: Text between the start of the cursor line and the cursor.
    line_prefix: str = ""
    #: Text between the cursor and the end of its line.
    line_suffix: str = ""
    #: One level of indentation in this file ("\t" or spaces).
    indent_unit: str = "    "
    #: Line break used by the document ("\n" or "\r\n").
    newline: str = "\n"


class _Counter:
    """Memoised ``count_tokens`` over slices of one text."""

    def __init__(self, text: str, count: Callable[[str], int]) -> None:
        self.text = text
        self.count = count
        self.cache: dict[tuple[int, int], int] = {}

    def __call__(self, start: int, end: int) -> int:
        key = (start, end)
        if key not in self.cache:
            self.cache[key] = self.count(self.text[start:end]) if end > start else 0
        return self.cache[key]


def _farthest(candidates: list[int], cost: Callable[[int], int], budget: int) -> int:
    """Index of the last candidate whose (monotone) cost fits; -1 if none."""
    if not candidates or cost(candidates[0]) > budget:
        return -1
    if cost(candidates[-1]) <= budget:
        return len(candidates) - 1
    lo, hi = 0, len(candidates) - 1  # cost(lo) fits, cost(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(candidates[mid]) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _char_cut(lo: int, hi: int, cost: Callable[[int], int], budget: int) -> int:
    """Largest ``n`` in ``[lo, hi]`` with ``cost(n) <= budget`` (cost(lo) assumed 0)."""
    if cost(hi) <= budget:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


class _Cutter:
    """State for one ``build_context`` call."""

    def __init__(
        self,
        text: str,
        tree: tree_sitter.Tree | None,
        cursor: int,
        budget: int,
        count: Callable[[str], int],
    ) -> None:
        self.text = text
        self.cursor = cursor
        self.budget = max(0, budget)
        self.tok = _Counter(text, count)
        window = max(256, self.budget * CHARS_PER_TOKEN)
        self.lo = max(0, cursor - window)
        self.hi = min(len(text), cursor + window)
        self.line_start, self.line_end, self.line_next = line_bounds(text, cursor)
        self.root = tree.root_node if tree is not None else None
        self.bmap = LocalByteMap(text, self.lo, self.hi) if self.root is not None else None
        self.chain: list[tree_sitter.Node] = []
        if self.root is not None and self.bmap is not None:
            self.chain = ancestors_at(self.root, self.bmap.to_byte(cursor))

    # -- candidate cut points ---------------------------------------------------
    def prefix_candidates(self, nearest: int) -> list[int]:
        """Line starts in ``[lo, nearest]``, nearest first."""
        starts = [m.end() for m in LINE_BREAK.finditer(self.text, self.lo, nearest)]
        if self.lo == 0:
            starts.insert(0, 0)
        starts = [p for p in starts if p <= nearest]
        if not starts or starts[-1] != nearest:
            starts.append(nearest)
        return starts[::-1]

    def suffix_candidates(self, nearest: int) -> list[int]:
        """Line ends (after the break) in ``[nearest, hi]``, nearest first."""
        ends = [nearest]
        ends += [m.end() for m in LINE_BREAK.finditer(self.text, nearest, self.hi) if m.end() > nearest]
        if self.hi == len(self.text) and ends[-1] != self.hi:
            ends.append(self.hi)
        return ends

    # -- scopes --------------------------------------------------------------------
    def scope_regions(self) -> list[tuple[int, int]]:
        """Line-aligned spans of enclosing multi-line nodes, innermost first."""
        if self.bmap is None:
            return []
        regions: list[tuple[int, int]] = []
        for node in reversed(self.chain):
            if node.start_point[0] == node.end_point[0]:
                continue
            if node.start_byte < self.bmap.byte_lo or node.end_byte > self.bmap.byte_hi:
                break
            start = line_bounds(self.text, self.bmap.to_str(node.start_byte))[0]
            end_off = self.bmap.to_str(node.end_byte)
            end = line_bounds(self.text, max(end_off - 1, start))[2] if end_off > start else end_off
            end = max(end, self.line_next)
            start = min(start, self.line_start)
            if regions and (start, end) == regions[-1]:
                continue
            regions.append((start, end))
        return regions

    def fitting_scope(self) -> tuple[int, int]:
        """The largest enclosing scope whose prefix+suffix fit the budget."""
        best = (self.line_start, self.line_next)
        regions = self.scope_regions()

        def cost(i: int) -> int:
            return self.tok(regions[i][0], self.cursor) + self.tok(self.cursor, regions[i][1])

        index = _farthest(list(range(len(regions))), cost, self.budget)
        return regions[index] if index >= 0 else best

    # -- snapping ----------------------------------------------------------------
    def _opaque_at(self, byte: int) -> tree_sitter.Node | None:
        """A multi-line string/comment strictly containing ``byte``, if any."""
        assert self.root is not None
        node: tree_sitter.Node | None = self.root.descendant_for_byte_range(byte, byte)
        for _ in range(6):
            if node is None:
                return None
            if node.start_byte < byte < node.end_byte and any(k in node.type for k in _OPAQUE):
                return node
            node = node.parent
        return None

    def snap_prefix(self, cut: int) -> int:
        """Move a prefix cut forward onto a whole sibling / out of strings."""
        if self.root is None or self.bmap is None or cut >= self.line_start:
            return cut
        byte = self.bmap.to_byte(cut)
        span = self.cursor - cut
        for ancestor in self.chain:
            if ancestor.start_byte > byte:
                break
            walker = ancestor.walk()
            if walker.goto_first_child_for_byte(byte) is None:
                continue
            child = walker.node
            if child is not None and child.start_byte < byte:
                child = child.next_sibling
            if child is None:
                continue
            boundary = line_bounds(self.text, self.bmap.to_str(child.start_byte))[0]
            if cut <= boundary <= self.line_start and boundary - cut <= SNAP_LOSS * span:
                cut = boundary
                break
        opaque = self._opaque_at(self.bmap.to_byte(cut))
        if opaque is not None:
            after = line_bounds(self.text, self.bmap.to_str(opaque.end_byte))[2]
            cut = min(max(cut, after), self.line_start)
        return cut

    def snap_suffix(self, cut: int) -> int:
        """Move a suffix cut back onto a whole sibling's end / out of strings."""
        if self.root is None or self.bmap is None or cut <= self.line_next:
            return cut
        byte = self.bmap.to_byte(cut)
        span = cut - self.cursor
        for ancestor in self.chain:
            if ancestor.end_byte < byte:
                break
            walker = ancestor.walk()
            child: tree_sitter.Node | None
            if walker.goto_first_child_for_byte(byte) is None:
                if not walker.goto_last_child():
                    continue
                child = walker.node
            else:
                child = walker.node
                if child is not None and child.end_byte > byte:
                    child = child.prev_sibling
            if child is None or child.end_byte <= self.bmap.to_byte(self.cursor):
                continue
            end_off = self.bmap.to_str(child.end_byte)
            boundary = line_bounds(self.text, max(end_off - 1, 0))[2]
            if self.line_next <= boundary <= cut and cut - boundary <= SNAP_LOSS * span:
                cut = boundary
                break
        opaque = self._opaque_at(self.bmap.to_byte(cut))
        if opaque is not None:
            before = line_bounds(self.text, self.bmap.to_str(opaque.start_byte))[0]
            cut = max(min(cut, before), self.line_next)
        return cut

    # -- the cut ------------------------------------------------------------------
    def cut(self) -> tuple[int, int]:
        """(prefix start, suffix end) offsets."""
        cursor, budget = self.cursor, self.budget
        if self.tok(self.line_start, cursor) + self.tok(cursor, self.line_next) > budget:
            return self.cut_line()
        scope_start, scope_end = self.fitting_scope()
        used_pre = self.tok(scope_start, cursor)
        used_suf = self.tok(cursor, scope_end)
        share = budget * 3 // 4
        pre_budget = min(max(share, used_pre), budget - used_suf)

        pre_cands = self.prefix_candidates(scope_start)
        suf_cands = self.suffix_candidates(scope_end)

        def pre_cost(p: int) -> int:
            return self.tok(p, cursor)

        def suf_cost(p: int) -> int:
            return self.tok(cursor, p)

        i = max(0, _farthest(pre_cands, pre_cost, pre_budget))
        start = pre_cands[i]
        j = max(0, _farthest(suf_cands, suf_cost, budget - pre_cost(start)))
        end = suf_cands[j]
        if j == len(suf_cands) - 1 and i < len(pre_cands) - 1:
            # the suffix ran out of text: hand its unused share back
            i = max(i, _farthest(pre_cands, pre_cost, budget - suf_cost(end)))
            start = pre_cands[i]
        return self.snap_prefix(start), self.snap_suffix(end)

    def cut_line(self) -> tuple[int, int]:
        """Pathological: the cursor line alone exceeds the budget; cut by chars."""
        cursor, budget = self.cursor, self.budget
        lo = max(self.line_start, self.lo)
        hi = min(self.line_next, self.hi)
        suf_budget = budget - budget * 3 // 4
        suffix_len = _char_cut(0, hi - cursor, lambda n: self.tok(cursor, cursor + n), suf_budget)
        pre_left = budget - self.tok(cursor, cursor + suffix_len)
        prefix_len = _char_cut(0, cursor - lo, lambda n: self.tok(cursor - n, cursor), pre_left)
        if prefix_len == cursor - lo:  # short prefix: give the rest to the suffix
            left = budget - self.tok(cursor - prefix_len, cursor)
            suffix_len = _char_cut(suffix_len, hi - cursor, lambda n: self.tok(cursor, cursor + n), left)
        return cursor - prefix_len, cursor + suffix_len


def build_context(
    doc_text: str,
    tree: tree_sitter.Tree | None,
    language: str | None,
    cursor_offset: int,
    budget_tokens: int,
    count_tokens: Callable[[str], int],
) -> InfillContext:
    """Prefix/suffix around ``cursor_offset`` within ``budget_tokens`` tokens.

    ``tree`` must be the parse of ``doc_text`` (or ``None``: whole lines only).
    The budget is split 3:1 between prefix and suffix, except that the largest
    enclosing scope that fits is always kept whole and unused share moves to
    the other side. ``count_tokens`` is called O(log n) times (memoised binary
    searches over line boundaries within a window of
    ``CHARS_PER_TOKEN * budget_tokens`` characters per side).
    """
    cursor = min(max(cursor_offset, 0), len(doc_text))
    cutter = _Cutter(doc_text, tree, cursor, budget_tokens, count_tokens)
    start, end = cutter.cut()
    kind = kind_at(doc_text, tree, language, cursor)
    indent, unit = expected_indent(doc_text, language, cursor, kind)
    crlf = doc_text.find("\r\n", cutter.lo, cutter.hi)
    lf = doc_text.find("\n", cutter.lo, cutter.hi)
    newline = "\r\n" if crlf >= 0 and crlf + 1 == lf else "\n"
    return InfillContext(
        prefix=doc_text[start:cursor],
        suffix=doc_text[cursor:end],
        kind=kind,
        language=language,
        indent=indent,
        cursor_offset=cursor,
        prefix_start_offset=start,
        suffix_end_offset=end,
        line_prefix=doc_text[cutter.line_start : cursor],
        line_suffix=doc_text[cursor : cutter.line_end],
        indent_unit=unit,
        newline=newline,
    )
