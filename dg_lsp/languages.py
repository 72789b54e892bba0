"""Which tree-sitter grammar serves a document, and cached access to it.

Grammar names are those of ``tree_sitter_language_pack`` and double as the
language tags of :mod:`dg_lsp.special_tokens`. ``None`` means "no grammar":
callers then use the line-based fallbacks.
"""

from __future__ import annotations

import functools
import posixpath
import threading
from urllib.parse import unquote, urlsplit

import tree_sitter
import tree_sitter_language_pack

from dg_lsp.special_tokens import LANGUAGES as TAGGED_LANGUAGES

__all__ = [
    "EXTENSIONS",
    "LANGUAGE_IDS",
    "SUPPORTED_LANGUAGES",
    "detect_language",
    "get_language",
    "get_parser",
    "has_grammar",
    "new_parser",
]

#: Grammars this server knows how to use.
SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(lang for lang in TAGGED_LANGUAGES if lang != "text")

#: LSP ``languageId`` (as sent by VS Code, Neovim, Helix, ...) -> grammar.
LANGUAGE_IDS: dict[str, str] = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "jsx": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "tsx": "tsx",
    "go": "go",
    "rust": "rust",
    "c": "c",
    "cpp": "cpp",
    "cuda-cpp": "cpp",
    "java": "java",
    "lua": "lua",
    "shellscript": "bash",
    "sh": "bash",
    "bash": "bash",
    "zsh": "bash",
}

#: Lower-case file extension (with dot) -> grammar.
EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".cc": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".java": "java",
    ".lua": "lua",
    ".sh": "bash",
    ".bash": "bash",
    ".zsh": "bash",
}

#: Extension-less file names that still have a grammar.
_FILE_NAMES: dict[str, str] = {
    ".bashrc": "bash",
    ".bash_profile": "bash",
    ".profile": "bash",
    ".zshrc": "bash",
}


def _basename(uri: str) -> str:
    """The last path segment of a URI or plain path, percent-decoded."""
    parts = urlsplit(uri)
    path = parts.path if parts.scheme and len(parts.scheme) > 1 else uri
    return posixpath.basename(unquote(path).replace("\\", "/"))


def detect_language(uri: str, language_id: str | None) -> str | None:
    """Grammar name for a document, or ``None`` when unsupported.

    A known ``languageId`` wins; otherwise (missing, ``plaintext``, an id we do
    not know) the file extension of ``uri`` decides.
    """
    if language_id:
        by_id = LANGUAGE_IDS.get(language_id.strip().lower())
        if by_id is not None:
            return by_id
    name = _basename(uri).lower()
    if name in _FILE_NAMES:
        return _FILE_NAMES[name]
    _, ext = posixpath.splitext(name)
    return EXTENSIONS.get(ext)


def has_grammar(language: str | None) -> bool:
    """Whether ``language`` names a grammar we can parse with."""
    return language in SUPPORTED_LANGUAGES


@functools.cache
def get_language(name: str) -> tree_sitter.Language:
    """The (process-wide cached) tree-sitter ``Language`` for a grammar name.

    Raises ``ValueError`` for names outside :data:`SUPPORTED_LANGUAGES`.
    """
    if name not in SUPPORTED_LANGUAGES:
        raise ValueError(f"no tree-sitter grammar for language {name!r}")
    return tree_sitter_language_pack.get_language(name)  # type: ignore[arg-type]


def new_parser(name: str) -> tree_sitter.Parser:
    """A fresh parser for ``name`` (use one per document or thread)."""
    return tree_sitter.Parser(get_language(name))


_local = threading.local()


def get_parser(name: str) -> tree_sitter.Parser:
    """A parser for ``name`` cached per thread (parsers are not thread-safe)."""
    cache: dict[str, tree_sitter.Parser] | None = getattr(_local, "parsers", None)
    if cache is None:
        cache = {}
        _local.parsers = cache
    parser = cache.get(name)
    if parser is None:
        parser = cache[name] = new_parser(name)
    return parser
