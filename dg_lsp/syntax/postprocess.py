"""Turn the model's raw middle into the text to insert, or reject it.

Pipeline: normalise newlines, trim overlap with prefix/suffix, stop where the
syntax closes (per :class:`CompletionKind`), re-indent, balance-check
brackets, and reject completions that make the parse worse.
"""

from __future__ import annotations

import re

from dg_lsp.languages import get_parser, has_grammar
from dg_lsp.syntax.brackets import CLOSE, OPEN, PAIRS, code_events
from dg_lsp.syntax.context import InfillContext
from dg_lsp.syntax.kinds import CompletionKind
from dg_lsp.syntax.lexical import (
    TAB_WIDTH,
    LexicalSpec,
    indent_of,
    indent_width,
    is_closer_line,
    is_opener_line,
    spec_for,
)
from dg_lsp.syntax.offsets import encode
from dg_lsp.syntax.treeutil import count_errors

__all__ = ["clean_completion", "normalize_newlines", "parse_is_not_worse"]

#: Lines that continue a compound statement at its own indentation.
_CONTINUATION = re.compile(r"^(else\b|elif\b|except\b|finally\b|elseif\b|catch\b|case\b)")
#: Lines that end a keyword block (Lua, shell) and belong to the statement.
_KEYWORD_END = re.compile(r"^(end|until|fi|done|esac)\b")
_MIN_OVERLAP = 6  # non-space characters a repeated line needs to count as overlap
_CONTEXT_TAIL = 2000  # characters of the cursor line scanned for open brackets


def normalize_newlines(text: str) -> str:
    """``\\r\\n`` and ``\\r`` to ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _solid(line: str) -> int:
    """Non-whitespace characters of ``line``."""
    return len("".join(line.split()))


def _first_lines(text: str, count: int) -> list[str]:
    """Up to ``count`` first non-blank lines of ``text``, stripped."""
    out: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            out.append(line.strip())
            if len(out) == count:
                break
    return out


# -- step 2: overlap ------------------------------------------------------------------
def _drop_prefix_repeat(text: str, ctx: InfillContext, prefix: str) -> str:
    """Remove a leading copy of the end of the prefix."""
    core = ctx.line_prefix.strip()
    if ctx.kind is CompletionKind.REST_OF_LINE and len(core) >= 4:
        stripped = text.lstrip(" \t")
        if stripped.startswith(core):
            return stripped[len(core) :]
    if ctx.kind is not CompletionKind.REST_OF_LINE and "\n" in text:
        previous = [ln for ln in prefix.split("\n")[:-1] if ln.strip()]
        first, rest = text.split("\n", 1)
        if previous and first.strip() == previous[-1].strip() and _solid(first) >= _MIN_OVERLAP:
            return rest.lstrip("\n")
    return text


def _trim_suffix_overlap(text: str, ctx: InfillContext, suffix: str) -> str:
    """Cut the completion where it starts regenerating the suffix."""
    tail = ctx.line_suffix.strip()
    first_line, sep, rest = text.partition("\n")
    if len(tail) >= 4 and first_line.rstrip().endswith(tail) and first_line.strip() != tail:
        return first_line.rstrip()[: -len(tail)]
    after_line = suffix.split("\n", 1)[1] if "\n" in suffix else ""
    upcoming = _first_lines(after_line, 1)
    if not upcoming or _solid(upcoming[0]) < _MIN_OVERLAP:
        return text
    lines = text.split("\n")
    for index in range(1, len(lines)):
        if lines[index].strip() == upcoming[0]:
            return "\n".join(lines[:index])
    return text


def _repeats_suffix(text: str, ctx: InfillContext, suffix: str) -> bool:
    """Whether ``text`` is just what already follows the cursor."""
    if not text.strip():
        return True
    if suffix.startswith(text):
        return True
    if ctx.kind is not CompletionKind.REST_OF_LINE:
        mine = _first_lines(text, 10_000)
        return mine == _first_lines(suffix, len(mine))
    return False


# -- step 3: syntax stop ------------------------------------------------------------------
def _stop_rest_of_line(text: str, ctx: InfillContext, language: str | None) -> str:
    """Up to the end of the line (further only inside brackets it opened)."""
    head = ctx.line_prefix[-_CONTEXT_TAIL:]
    stack: list[tuple[str, bool]] = []  # (bracket, opened by the completion)
    after = ctx.line_suffix.lstrip()
    for index, ch in code_events(head + text, language):
        own = index >= len(head)
        pos = index - len(head)
        if ch in OPEN:
            stack.append((ch, own))
        elif ch in CLOSE:
            if not own:
                if stack:
                    stack.pop()
                continue
            if not stack:
                return text[:pos]
            opener, mine = stack[-1]
            if not mine and after.startswith(ch):
                return text[:pos]  # the suffix already closes it
            stack.pop()
        elif ch == "\n" and own and not any(mine for _, mine in stack):
            return text[:pos]
    return text


def _stop_line(text: str, ctx: InfillContext, language: str | None, spec: LexicalSpec) -> str:
    """One statement: one logical line, or a whole compound statement."""
    depth = 0
    first_end = len(text)
    for index, ch in code_events(text, language):
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth -= 1
            if depth < 0:
                return text[:index]
        elif depth == 0:
            first_end = index
            break
    head = text[:first_end]
    if first_end == len(text) or not is_opener_line(head.split("\n")[-1], spec):
        return head
    base = indent_width(ctx.line_prefix + indent_of(text))
    kept = [head]
    for line in text[first_end + 1 :].split("\n"):
        width = indent_width(indent_of(line))
        stripped = line.strip()
        if not stripped or width > base:
            kept.append(line)
        elif width == base and _CONTINUATION.match(stripped):
            kept.append(line)
        elif width == base and _KEYWORD_END.match(stripped) and language in {"lua", "bash"}:
            kept.append(line)
            break
        elif width == base and stripped[0] in CLOSE and language != "python":
            kept.append(line)
            break
        else:
            break
    return "\n".join(kept)


def _stop_block(text: str, ctx: InfillContext, language: str | None, spec: LexicalSpec, suffix: str) -> str:
    """Lines of the body: stop at the first dedent below the body indentation."""
    lines = text.split("\n")
    opener_eol = bool(ctx.line_prefix.strip())
    if opener_eol:
        if len(lines) == 1:
            return text  # inline body, e.g. ``{ return x; }``
        if lines[0].strip():
            return lines[0]
        body = [ln for ln in lines[1:] if ln.strip()]
        if not body:
            return ""
        base = indent_width(indent_of(body[0]))
        if base <= indent_width(indent_of(ctx.line_prefix)):
            return ""
    else:
        base = indent_width(ctx.line_prefix + indent_of(lines[0]))
    kept = [lines[0]]
    upcoming = _first_lines(suffix, 1)
    closer_follows = bool(upcoming) and is_closer_line(upcoming[0], spec)
    for line in lines[1:]:
        if not line.strip():
            kept.append(line)
            continue
        if indent_width(indent_of(line)) >= base:
            kept.append(line)
            continue
        if is_closer_line(line, spec) and not closer_follows and not _CONTINUATION.match(line.strip()):
            kept.append(line)  # nothing closes the block yet: keep its closer
        break
    return "\n".join(kept)


# -- step 4: indentation ----------------------------------------------------------------
def _render(width: int, unit: str) -> str:
    if unit == "\t":
        return "\t" * (width // TAB_WIDTH) + " " * (width % TAB_WIDTH)
    return " " * width


def _foreign_style(ws: str, unit: str) -> bool:
    """Indentation written with tabs in a spaces file, or vice versa."""
    if unit == "\t":
        return ws.startswith(" " * TAB_WIDTH)
    return "\t" in ws


def _reindent(text: str, ctx: InfillContext) -> str:
    """Shift the model's base indentation onto the expected one; match tabs/spaces.

    The model's base is where its first line sits (cursor column plus any
    leading whitespace it emitted; for a body after an opener at the end of
    the cursor line, its first body line). Lines are shifted by the difference
    to ``ctx.indent``. A LINE completion typed at column 0 is trusted as is.
    """
    lines = text.split("\n")
    unit = ctx.indent_unit
    tab = TAB_WIDTH if unit == "\t" else max(1, len(unit))
    expected = indent_width(ctx.indent, tab)
    shift = 0
    if ctx.line_prefix.strip():
        body = [ln for ln in lines[1:] if ln.strip()]
        if ctx.kind is CompletionKind.BLOCK and body:
            shift = expected - indent_width(indent_of(body[0]), tab)
    elif ctx.kind is CompletionKind.BLOCK or ctx.line_prefix:
        shift = expected - indent_width(ctx.line_prefix + indent_of(lines[0]), tab)
        if shift and lines[0].strip():
            need = expected - indent_width(ctx.line_prefix, tab)
            lines[0] = _render(max(0, need), unit) + lines[0].lstrip(" \t")
    out = [lines[0]]
    for line in lines[1:]:
        ws = indent_of(line)
        if not line.strip():
            out.append("")
        elif shift or _foreign_style(ws, unit):
            out.append(_render(max(0, indent_width(ws, tab) + shift), unit) + line[len(ws) :])
        else:
            out.append(line)
    return "\n".join(out)


# -- step 5: checks -------------------------------------------------------------------------
def _brackets_balanced(text: str, ctx: InfillContext, language: str | None) -> bool:
    """No bracket the completion opens stays open, and none it closes mismatches.

    Scans cursor line + completion + rest of line; closers of brackets opened
    on earlier lines are fine (the completion may finish a multi-line call).
    """
    head = ctx.line_prefix[-_CONTEXT_TAIL:]
    lo, hi = len(head), len(head) + len(text)
    stack: list[tuple[str, int]] = []
    for index, ch in code_events(head + text + ctx.line_suffix, language):
        if ch in OPEN:
            stack.append((ch, index))
        elif ch in CLOSE and stack:
            opener, where = stack.pop()
            if PAIRS[ch] != opener and (lo <= index < hi or lo <= where < hi):
                return False
    return not any(lo <= where < hi for _, where in stack)


def parse_is_not_worse(before: str, after: str, language: str | None) -> bool:
    """Whether ``after`` has no more ERROR/MISSING nodes than ``before``."""
    if not has_grammar(language):
        return True
    assert language is not None
    parser = get_parser(language)
    old = parser.parse(encode(before))
    new = parser.parse(encode(after))
    if old is None or new is None:
        return True
    return count_errors(new.root_node) <= count_errors(old.root_node)


def clean_completion(
    middle: str,
    ctx: InfillContext,
    language: str | None,
    parse_check: bool = True,
) -> str | None:
    """The text to insert at the cursor, or ``None`` to show nothing.

    ``parse_check`` rejects completions that leave brackets open or mismatched, or that make
    the file parse worse. Newlines in the result follow the document (``ctx.newline``).
    """
    spec = spec_for(language)
    prefix = normalize_newlines(ctx.prefix)
    suffix = normalize_newlines(ctx.suffix)
    text = normalize_newlines(middle).replace("\x00", "")
    text = _drop_prefix_repeat(text, ctx, prefix)
    text = _trim_suffix_overlap(text, ctx, suffix)
    if ctx.kind is CompletionKind.REST_OF_LINE:
        text = _stop_rest_of_line(text, ctx, language)
        if not ctx.line_suffix.strip():
            text = text.rstrip()
    elif ctx.kind is CompletionKind.LINE:
        text = _stop_line(text, ctx, language, spec).rstrip()
    else:
        text = _stop_block(text, ctx, language, spec, suffix).rstrip()
    if not text.strip() or _repeats_suffix(text, ctx, suffix):
        return None
    if "\n" in text:
        text = _reindent(text, ctx)
        if ctx.kind is CompletionKind.BLOCK and ctx.line_prefix.strip() and is_closer_line(ctx.line_suffix, spec):
            text += "\n" + indent_of(ctx.line_prefix)  # ``{|}``: closer onto its own line
    if parse_check and not _brackets_balanced(text, ctx, language):
        return None
    if parse_check and not parse_is_not_worse(prefix + suffix, prefix + text + suffix, language):
        return None
    if _repeats_suffix(text, ctx, suffix):
        return None
    return text.replace("\n", ctx.newline) if ctx.newline != "\n" else text
