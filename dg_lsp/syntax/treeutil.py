"""Small helpers over tree-sitter trees (error nodes, cursor-enclosing chains)."""

from __future__ import annotations

from collections.abc import Iterator

import tree_sitter

__all__ = ["ancestors_at", "count_errors", "error_nodes", "parse_errors"]


def error_nodes(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    """ERROR and MISSING nodes under ``node`` in document order.

    Only subtrees flagged ``has_error`` are entered, so a clean 5 MB tree costs
    O(1) and a tree with a few errors O(depth * siblings) around them.
    """
    if not node.has_error and not node.is_missing:
        return
    cursor = node.walk()
    depth = 0
    while True:
        current = cursor.node
        if current is not None and (current.is_error or current.is_missing):
            yield current
        if current is not None and current.has_error and cursor.goto_first_child():
            depth += 1
            continue
        while not cursor.goto_next_sibling():
            if depth == 0 or not cursor.goto_parent():
                return
            depth -= 1
        if depth == 0:
            return


def count_errors(node: tree_sitter.Node) -> int:
    """Number of ERROR plus MISSING nodes under (and including) ``node``."""
    return sum(1 for _ in error_nodes(node))


def parse_errors(parser: tree_sitter.Parser, source: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Parse ``source``; return the error count and the byte spans of errors."""
    tree = parser.parse(source)
    if tree is None:
        return 0, []
    spans = [(n.start_byte, n.end_byte) for n in error_nodes(tree.root_node)]
    return len(spans), spans


def ancestors_at(root: tree_sitter.Node, byte: int) -> list[tree_sitter.Node]:
    """Nodes containing ``byte``, outermost (``root``) first.

    A node "contains" the position when ``start <= byte <= end``; on a boundary
    between two siblings the later one wins (the cursor sits before it).
    Descends with a tree cursor: O(depth * log(children)), no full walk.
    """
    chain = [root]
    cursor = root.walk()
    while True:
        index = cursor.goto_first_child_for_byte(byte)
        if index is None:
            # past the last child's start: the last child may still end at byte
            if not cursor.goto_last_child():
                break
            node = cursor.node
            if node is None or node.end_byte < byte:
                break
        node = cursor.node
        if node is None or node.start_byte > byte:
            # goto_first_child_for_byte picks the first child ending after byte;
            # if it starts after, the position is in a gap between children
            break
        chain.append(node)
    return chain
