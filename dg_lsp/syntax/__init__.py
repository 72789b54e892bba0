"""Tree-sitter context layer: what to infill, and cleaning what comes back."""

from dg_lsp.syntax.classify import expected_indent
from dg_lsp.syntax.context import InfillContext, build_context
from dg_lsp.syntax.document_tree import DocumentTree
from dg_lsp.syntax.holes import HOLE_MIX, NODE_MIX, kind_at, sample_hole
from dg_lsp.syntax.kinds import CompletionKind
from dg_lsp.syntax.postprocess import clean_completion, normalize_newlines, parse_is_not_worse
from dg_lsp.syntax.treeutil import count_errors

__all__ = [
    "HOLE_MIX",
    "NODE_MIX",
    "CompletionKind",
    "DocumentTree",
    "InfillContext",
    "build_context",
    "clean_completion",
    "count_errors",
    "expected_indent",
    "kind_at",
    "normalize_newlines",
    "parse_is_not_worse",
    "sample_hole",
]
