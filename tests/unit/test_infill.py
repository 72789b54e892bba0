"""LSP-independent infill helpers."""

from __future__ import annotations

from dg_lsp.infill import minimal_edit, printable


def test_printable_drops_control_characters_but_keeps_tabs_and_newlines() -> None:
    assert printable("a\x0bb\x13c\td\r\ne\rf\x7f") == "abc\td\nef"


def test_minimal_edit_is_the_smallest_replacement() -> None:
    old, new = "total = sum(xs)\n", "total = sum(values)\n"
    start, end, text = minimal_edit(old, new)
    assert old[:start] + text + old[end:] == new
    assert (start, end, text) == (12, 13, "value")  # "xs" -> "values" shares the trailing "s"
    assert minimal_edit("same", "same") == (4, 4, "")
    assert minimal_edit("aaa", "aa") == (2, 3, "")
