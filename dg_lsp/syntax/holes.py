"""Draw training holes the way editors create them (used by the trainer).

Mixture (probabilities of :data:`HOLE_MIX`; without a tree the ``node`` share
goes to ``lines``):

* ``empty`` 3%: a zero-length hole at a random line position;
* ``rest_of_line`` 25%: from a random point inside a line's code to its end;
* ``line`` 15%: one whole line's content (after its indentation);
* ``node`` 35%: a syntax node around a random point: block or function body,
  call arguments, an expression or a statement (weights :data:`NODE_MIX`);
* ``lines`` 12%: the content of 2-8 consecutive lines;
* ``chars`` 10%: a random character span.

Everything is drawn from the given ``random.Random`` only, so a seed fixes
the hole. The kind is :func:`kind_at` on the holed text, exactly what the
server computes when a user's cursor sits there.
"""

from __future__ import annotations

import random
import tree_sitter

from dg_lsp.syntax.classify import kind_at
from dg_lsp.syntax.kinds import CompletionKind
from dg_lsp.syntax.lexical import indent_of
from dg_lsp.syntax.offsets import LocalByteMap
from dg_lsp.syntax.treeutil import ancestors_at

__all__ = ["HOLE_MIX", "NODE_MIX", "kind_at", "sample_hole"]

HOLE_MIX: tuple[tuple[str, float], ...] = (
    ("empty", 0.03),
    ("rest_of_line", 0.25),
    ("line", 0.15),
    ("node", 0.35),
    ("lines", 0.12),
    ("chars", 0.10),
)
NODE_MIX: tuple[tuple[str, float], ...] = (
    ("block", 0.35),
    ("arguments", 0.15),
    ("expression", 0.25),
    ("statement", 0.25),
)
_BLOCK_TYPES = {
    "block",
    "compound_statement",
    "statement_block",
    "declaration_list",
    "field_declaration_list",
    "class_body",
    "enum_body",
    "interface_body",
    "constructor_body",
    "do_group",
    "function_body",
}
_ARGUMENT_TYPES = {"argument_list", "arguments", "parameters", "formal_parameters", "parameter_list"}
_RETRIES = 12


def _category(node: tree_sitter.Node) -> str | None:
    kind = node.type
    if kind in _BLOCK_TYPES or node.parent is not None and node.parent.child_by_field_name("body") == node:
        return "block"
    if kind in _ARGUMENT_TYPES:
        return "arguments"
    if kind.endswith("expression") or kind in {"call", "binary_operator", "call_expression", "lambda"}:
        return "expression"
    if kind.endswith(("statement", "declaration", "definition", "assignment")):
        return "statement"
    return None


def _pick(rng: random.Random, mix: tuple[tuple[str, float], ...]) -> str:
    point = rng.random() * sum(weight for _, weight in mix)
    for name, weight in mix:
        point -= weight
        if point < 0:
            return name
    return mix[-1][0]


def _lines(text: str) -> list[tuple[int, int]]:
    """(content start after indentation, content end) of every non-blank line."""
    out: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if body.strip():
            start = pos + len(indent_of(body))
            out.append((start, pos + len(body.rstrip())))
        pos += len(line)
    return out


def _inner(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink a span to exclude enclosing braces and surrounding whitespace."""
    if end - start >= 2 and text[start] in "{([" and text[end - 1] in "})]":
        start, end = start + 1, end - 1
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _node_hole(
    text: str, tree: tree_sitter.Tree, rng: random.Random, anchor: int, max_chars: int
) -> tuple[int, int] | None:
    """A hole covering a syntax node of a random category around ``anchor``."""
    window = 4 * max_chars
    bmap = LocalByteMap(text, anchor - window, anchor + window)
    chain = ancestors_at(tree.root_node, bmap.to_byte(anchor))
    want = _pick(rng, NODE_MIX)
    fitting: list[tuple[int, int]] = []
    for node in chain[1:]:
        if node.start_byte < bmap.byte_lo or node.end_byte > bmap.byte_hi or _category(node) != want:
            continue
        start, end = _inner(text, bmap.to_str(node.start_byte), bmap.to_str(node.end_byte))
        if 0 < end - start <= max_chars:
            fitting.append((start, end))
    return rng.choice(fitting) if fitting else None


def sample_hole(
    text: str,
    language: str | None,
    tree: tree_sitter.Tree | None,
    rng: random.Random,
    max_chars: int = 600,
) -> tuple[int, int, CompletionKind]:
    """Draw one hole ``(start, end, kind)`` in ``text`` (``str`` offsets).

    ``tree`` must be the parse of ``text`` when given. The hole is at most
    ``max_chars`` characters long and ``start <= end``.
    """
    max_chars = max(1, max_chars)
    lines = _lines(text)
    if not lines:
        cut = rng.randint(0, len(text))
        return cut, cut, kind_at(text, None, language, cut)
    span: tuple[int, int] | None = None
    for _ in range(_RETRIES):
        span = _draw(text, tree, rng, lines, max_chars)
        if span is not None and span[1] - span[0] <= max_chars:
            break
        span = None
    if span is None:
        line_start, line_end = rng.choice(lines)
        start = rng.randint(line_start, line_end)
        span = (start, min(line_end, start + max_chars))
    start, end = span
    holed = text[:start] + text[end:]
    return start, end, kind_at(holed, None, language, start)


def _draw(
    text: str,
    tree: tree_sitter.Tree | None,
    rng: random.Random,
    lines: list[tuple[int, int]],
    max_chars: int,
) -> tuple[int, int] | None:
    mix = HOLE_MIX if tree is not None else tuple((n, w) for n, w in HOLE_MIX if n != "node")
    shape = _pick(rng, mix)
    index = rng.randrange(len(lines))
    line_start, line_end = lines[index]
    if shape == "empty":
        cut = rng.randint(line_start, line_end)
        return cut, cut
    if shape == "rest_of_line":
        return rng.randint(line_start, max(line_start, line_end - 1)), line_end
    if shape == "line":
        return line_start, line_end
    if shape == "lines":
        return line_start, lines[min(len(lines) - 1, index + rng.randint(1, 7))][1]
    if shape == "chars":
        start = rng.randint(0, len(text))
        return start, min(len(text), start + int(rng.expovariate(1 / 40)))
    if shape == "node":
        assert tree is not None
        return _node_hole(text, tree, rng, rng.randint(line_start, line_end), max_chars)
    return None

