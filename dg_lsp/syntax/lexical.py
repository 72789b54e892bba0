"""Per-language lexical facts: comments, block openers/closers, indentation.

Deliberately grammar-free so that the trainer (which works on holed text it
has not parsed) and the server classify positions identically.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "LexicalSpec",
    "TAB_WIDTH",
    "detect_indent_unit",
    "indent_of",
    "indent_width",
    "is_closer_line",
    "is_inline_opener",
    "is_opener_line",
    "line_bounds",
    "spec_for",
    "strip_comment",
]

TAB_WIDTH = 4
_LONG_LINE = 2000
_BRACKET_OPEN = r"[{(\[]"
_BRACKET_CLOSE = r"[}\])]"


@dataclass(frozen=True)
class LexicalSpec:
    """What a line comment, a block opener and a block closer look like."""

    line_comments: tuple[str, ...]
    opener: re.Pattern[str]
    closer: re.Pattern[str]
    default_indent: str = "    "
    #: Opener that starts a block body on the cursor's own line (``{|}``).
    inline_opener: re.Pattern[str] = re.compile(r"\{$")


_BRACES = LexicalSpec(
    ("//",),
    re.compile(_BRACKET_OPEN + r"$"),
    re.compile(r"^" + _BRACKET_CLOSE),
)
_SPECS: dict[str, LexicalSpec] = {
    "python": LexicalSpec(
        ("#",),
        re.compile(r"(:|" + _BRACKET_OPEN + r")$"),
        re.compile(r"^" + _BRACKET_CLOSE),
        inline_opener=re.compile(r":$"),
    ),
    "javascript": _BRACES,
    "typescript": _BRACES,
    "tsx": _BRACES,
    "go": LexicalSpec(_BRACES.line_comments, _BRACES.opener, _BRACES.closer, "\t"),
    "rust": _BRACES,
    "c": _BRACES,
    "cpp": _BRACES,
    "java": _BRACES,
    "lua": LexicalSpec(
        ("--",),
        re.compile(r"(\bthen|\bdo|\belse|\brepeat|\bfunction\b.*\)|" + _BRACKET_OPEN + r")$"),
        re.compile(r"^(end\b|until\b|else\b|elseif\b|" + _BRACKET_CLOSE + r")"),
        "  ",
        re.compile(r"(\bthen|\bdo|\belse|\brepeat|\bfunction\b.*\)|\{)$"),
    ),
    "bash": LexicalSpec(
        ("#",),
        re.compile(r"(\bthen|\bdo|\belse|" + _BRACKET_OPEN + r")$"),
        re.compile(r"^(fi\b|done\b|esac\b|else\b|elif\b|" + _BRACKET_CLOSE + r")"),
        inline_opener=re.compile(r"(\bthen|\bdo|\belse|\{)$"),
    ),
}
_TEXT = LexicalSpec((), re.compile(_BRACKET_OPEN + r"$"), re.compile(r"^" + _BRACKET_CLOSE))


def spec_for(language: str | None) -> LexicalSpec:
    """Lexical facts for ``language`` (bracket-only rules for unknown ones)."""
    return _SPECS.get(language or "", _TEXT)


def strip_comment(line: str, spec: LexicalSpec) -> str:
    """``line`` without a trailing line comment (quotes are respected roughly)."""
    if not any(marker in line for marker in spec.line_comments):
        return line
    if len(line) > _LONG_LINE:  # minified code: judge the tail only
        return line[: len(line) - _LONG_LINE] + strip_comment(line[-_LONG_LINE:], spec)
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        else:
            for marker in spec.line_comments:
                if line.startswith(marker, i):
                    return line[:i]
        i += 1
    return line


def is_opener_line(line: str, spec: LexicalSpec) -> bool:
    """Whether ``line`` ends (ignoring a comment) with a block opener."""
    code = strip_comment(line, spec).rstrip()
    return bool(code) and spec.opener.search(code) is not None


def is_inline_opener(before: str, after: str, spec: LexicalSpec, language: str | None) -> bool:
    """Whether the cursor sits right after a block opener on its own line.

    ``{|}`` and ``{|`` (end of line) count; ``(|)`` and ``d[1:|]`` do not, and
    for Python only an opener at the very end of the line counts.
    """
    code = strip_comment(before, spec).rstrip()
    if not code or spec.inline_opener.search(code) is None:
        return False
    if not after.strip():
        return True
    return language != "python" and is_closer_line(after, spec)


def is_closer_line(line: str, spec: LexicalSpec) -> bool:
    """Whether ``line`` (stripped) starts with a block closer."""
    return spec.closer.match(line.strip()) is not None


def indent_of(line: str) -> str:
    """Leading whitespace of ``line``."""
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_width(indent: str, tab_width: int = TAB_WIDTH) -> int:
    """Column width of an indentation string."""
    width = 0
    for ch in indent:
        width = (width // tab_width + 1) * tab_width if ch == "\t" else width + 1
    return width


def line_bounds(text: str, offset: int) -> tuple[int, int, int]:
    """(content start, content end, next line start) of the line at ``offset``."""
    start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    if start > 0 and start < len(text) and text[start - 1] == "\r" and text[start] == "\n":
        start += 1  # offset sat between "\r" and "\n"
    end = start
    n = len(text)
    nl = text.find("\n", max(start, offset))
    cr = text.find("\r", max(start, offset))
    candidates = [p for p in (nl, cr) if p >= 0]
    end = min(candidates) if candidates else n
    nxt = end
    if end < n:
        nxt = end + 2 if text.startswith("\r\n", end) else end + 1
    return start, end, nxt


def detect_indent_unit(text: str, language: str | None, around: int = 0, span: int = 20000) -> str:
    """Indentation unit used near ``around`` ("\\t", or a run of spaces)."""
    lo = max(0, around - span)
    chunk = text[lo : around + span]
    tabs = spaces = 0
    steps: Counter[int] = Counter()
    prev = 0
    for line in chunk.splitlines():
        if not line.strip():
            continue
        ind = indent_of(line)
        if ind.startswith("\t"):
            tabs += 1
        elif ind:
            spaces += 1
        width = len(ind) if not ind.startswith("\t") else prev
        if not ind.startswith("\t") and width > prev:
            steps[width - prev] += 1
        prev = width
    if tabs > spaces:
        return "\t"
    if spaces:
        for step, _ in steps.most_common():
            if step in (2, 3, 4, 8):
                return " " * step
    return spec_for(language).default_indent
