"""A tiny language-aware scanner: brackets and newlines outside strings/comments."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["OPEN", "CLOSE", "PAIRS", "code_events"]

OPEN = "([{"
CLOSE = ")]}"
PAIRS = {")": "(", "]": "[", "}": "{"}

_BLOCK_COMMENT = {"javascript", "typescript", "tsx", "go", "rust", "c", "cpp", "java"}
_HASH_COMMENT = {"python", "bash"}


def code_events(text: str, language: str | None) -> Iterator[tuple[int, str]]:
    """Yield ``(index, char)`` for brackets and ``\\n`` that are real code.

    Quotes, line comments and block comments are skipped approximately
    (single-quoted strings end at a newline; Rust lifetimes are not strings).
    """
    lang = language or ""
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        if ch == "\n" or ch in OPEN or ch in CLOSE:
            yield i, ch
            i += 1
            continue
        if lang in _BLOCK_COMMENT and text.startswith("//", i) or lang in _HASH_COMMENT and ch == "#":
            i = _skip_to_newline(text, i)
            continue
        if lang == "lua" and text.startswith("--", i):
            if text.startswith("[[", i + 2):
                end = text.find("]]", i + 4)
                i = n if end < 0 else end + 2
            else:
                i = _skip_to_newline(text, i)
            continue
        if lang in _BLOCK_COMMENT and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if lang == "lua" and text.startswith("[[", i):
            end = text.find("]]", i + 2)
            i = n if end < 0 else end + 2
            continue
        if lang == "python" and (text.startswith('"""', i) or text.startswith("'''", i)):
            end = text.find(text[i : i + 3], i + 3)
            i = n if end < 0 else end + 3
            continue
        if ch in "\"'`":
            if ch == "'" and lang == "rust" and not _rust_char(text, i):
                i += 1
                continue
            if ch == "`" and lang not in {"javascript", "typescript", "tsx", "go", "bash"}:
                i += 1
                continue
            i = _skip_string(text, i, multiline=ch == "`")
            continue
        i += 1


def _skip_to_newline(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _skip_string(text: str, i: int, multiline: bool) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == quote:
            return j + 1
        if ch == "\n" and not multiline:
            return j
        j += 1
    return len(text)


def _rust_char(text: str, i: int) -> bool:
    """Whether the ``'`` at ``i`` starts a char literal (not a lifetime)."""
    if text.startswith("\\", i + 1):
        return True
    return i + 2 < len(text) and text[i + 2] == "'"
