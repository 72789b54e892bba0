"""Classify a cursor position (:class:`CompletionKind`) and its expected indent.

Purely lexical on purpose: the trainer classifies holes in text it never
parsed, and must agree with the server, which calls the same function.
"""

from __future__ import annotations

import tree_sitter

from dg_lsp.syntax.kinds import CompletionKind
from dg_lsp.syntax.lexical import (
    LexicalSpec,
    detect_indent_unit,
    indent_of,
    indent_width,
    is_closer_line,
    is_inline_opener,
    is_opener_line,
    line_bounds,
    spec_for,
)

__all__ = ["expected_indent", "kind_at", "neighbour_line"]

_SCAN_LIMIT = 200  # blank lines skipped at most when looking for a neighbour


def neighbour_line(text: str, offset: int, direction: int) -> str | None:
    """The nearest non-blank line above (``-1``) or below (``+1``) ``offset``'s line."""
    start, _, nxt = line_bounds(text, offset)
    for _ in range(_SCAN_LIMIT):
        if direction < 0:
            if start == 0:
                return None
            back = start - 1
            if back > 0 and text[back] == "\n" and text[back - 1] == "\r":
                back -= 1  # step over a whole CRLF
            start, end, _ = line_bounds(text, back)
        else:
            if nxt >= len(text):
                return None
            start, end, nxt = line_bounds(text, nxt)
        line = text[start:end]
        if line.strip():
            return line
    return None


def _empty_body_follows(text: str, offset: int, opener: str, after: str, spec: LexicalSpec) -> bool:
    """After an opener line: is the body below the cursor empty?"""
    if after.strip():
        return is_closer_line(after, spec)
    below = neighbour_line(text, offset, +1)
    if below is None or is_closer_line(below, spec):
        return True
    return indent_width(indent_of(below)) <= indent_width(indent_of(opener))


def kind_at(
    text: str,
    tree: tree_sitter.Tree | None,
    language: str | None,
    cursor_offset: int,
) -> CompletionKind:
    """Kind of completion wanted at ``cursor_offset``.

    ``tree`` is accepted for API symmetry but not consulted, so that a holed
    training text (no tree) and a live document classify the same way.
    """
    del tree
    spec = spec_for(language)
    cursor = min(max(cursor_offset, 0), len(text))
    start, end, _ = line_bounds(text, cursor)
    before, after = text[start:cursor], text[cursor:end]
    if before.strip():
        if is_inline_opener(before, after, spec, language):
            return CompletionKind.BLOCK
        return CompletionKind.REST_OF_LINE
    if after.strip() and not is_closer_line(after, spec):
        return CompletionKind.REST_OF_LINE
    above = neighbour_line(text, cursor, -1)
    if above is not None and is_opener_line(above, spec):
        if _empty_body_follows(text, cursor, above, after, spec):
            return CompletionKind.BLOCK
    return CompletionKind.LINE


def expected_indent(
    text: str, language: str | None, cursor_offset: int, kind: CompletionKind
) -> tuple[str, str]:
    """(indentation the inserted code should have, the file's indent unit).

    REST_OF_LINE: the cursor line's indentation. LINE: the whitespace before
    the cursor, or if there is none the indentation of the line above (one
    unit deeper after an opener). BLOCK: one unit deeper than the opener,
    unless the editor already indented the cursor further.
    """
    spec = spec_for(language)
    cursor = min(max(cursor_offset, 0), len(text))
    start, _, _ = line_bounds(text, cursor)
    line_indent = indent_of(text[start:cursor])
    unit = detect_indent_unit(text, language, cursor)
    if kind is CompletionKind.REST_OF_LINE:
        return indent_of(text[start : start + 256]), unit
    before = text[start:cursor]
    if kind is CompletionKind.LINE and before:
        return line_indent, unit
    if kind is CompletionKind.BLOCK and before.strip():
        return indent_of(before) + unit, unit  # cursor at the end of the opener line
    above = neighbour_line(text, cursor, -1)
    base = indent_of(above) if above is not None else ""
    if above is not None and is_opener_line(above, spec):
        base += unit
    if kind is CompletionKind.BLOCK and above is not None and indent_width(before) > indent_width(indent_of(above)):
        return before, unit  # the editor already indented the body: trust it
    if kind is CompletionKind.LINE or not before:
        return base, unit
    return (before if indent_width(before) >= indent_width(base) else base), unit
