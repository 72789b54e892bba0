"""Language detection and cached grammar access."""

from __future__ import annotations

import threading

import pytest
import tree_sitter

from dg_lsp.languages import (
    EXTENSIONS,
    SUPPORTED_LANGUAGES,
    detect_language,
    get_language,
    get_parser,
    has_grammar,
    new_parser,
)
from dg_lsp.special_tokens import LANGUAGES


@pytest.mark.parametrize(
    ("language_id", "expected"),
    [
        ("python", "python"),
        ("javascript", "javascript"),
        ("javascriptreact", "javascript"),
        ("typescript", "typescript"),
        ("typescriptreact", "tsx"),
        ("go", "go"),
        ("rust", "rust"),
        ("c", "c"),
        ("cpp", "cpp"),
        ("java", "java"),
        ("lua", "lua"),
        ("shellscript", "bash"),
        ("sh", "bash"),
        ("bash", "bash"),
        ("Python", "python"),
    ],
)
def test_language_ids(language_id: str, expected: str) -> None:
    assert detect_language("untitled:Untitled-1", language_id) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.py", "python"),
        ("a.js", "javascript"),
        ("a.mjs", "javascript"),
        ("a.cjs", "javascript"),
        ("a.jsx", "javascript"),
        ("a.ts", "typescript"),
        ("a.tsx", "tsx"),
        ("a.go", "go"),
        ("a.rs", "rust"),
        ("a.c", "c"),
        ("a.h", "c"),
        ("a.cpp", "cpp"),
        ("a.cc", "cpp"),
        ("a.hpp", "cpp"),
        ("a.java", "java"),
        ("a.lua", "lua"),
        ("a.sh", "bash"),
        ("a.bash", "bash"),
        ("A.PY", "python"),
    ],
)
def test_extensions(name: str, expected: str) -> None:
    assert detect_language(f"file:///home/u/project/{name}", None) == expected
    assert detect_language(f"file:///home/u/project/{name}", "plaintext") == expected


def test_uri_forms() -> None:
    assert detect_language("file:///C:/Users/me/my%20dir/main.rs", None) == "rust"
    assert detect_language("file:///tmp/x.py?query=1#frag", None) == "python"
    assert detect_language("/plain/path/script.lua", None) == "lua"
    assert detect_language("C:\\work\\tool.go", None) == "go"
    assert detect_language("file:///home/u/.bashrc", None) == "bash"


def test_language_id_wins_over_extension() -> None:
    assert detect_language("file:///x/template.txt", "python") == "python"
    assert detect_language("file:///x/component.js", "typescriptreact") == "tsx"


def test_unsupported_is_none() -> None:
    assert detect_language("file:///x/readme.md", "markdown") is None
    assert detect_language("file:///x/notes.txt", None) is None
    assert detect_language("file:///x/Makefile", None) is None
    assert detect_language("", None) is None


def test_every_mapped_grammar_is_supported_and_tagged() -> None:
    assert set(EXTENSIONS.values()) <= set(SUPPORTED_LANGUAGES)
    assert set(SUPPORTED_LANGUAGES) <= set(LANGUAGES)
    assert all(has_grammar(name) for name in SUPPORTED_LANGUAGES)
    assert not has_grammar(None) and not has_grammar("text")


@pytest.mark.parametrize("name", SUPPORTED_LANGUAGES)
def test_grammars_load_and_parse(name: str) -> None:
    language = get_language(name)
    assert isinstance(language, tree_sitter.Language)
    assert get_language(name) is language
    tree = get_parser(name).parse(b"x")
    assert tree is not None and tree.root_node is not None


def test_parser_cache_is_per_thread() -> None:
    main = get_parser("python")
    assert get_parser("python") is main
    other: list[tree_sitter.Parser] = []
    thread = threading.Thread(target=lambda: other.append(get_parser("python")))
    thread.start()
    thread.join()
    assert other and other[0] is not main
    assert new_parser("python") is not main


def test_unknown_grammar_raises() -> None:
    with pytest.raises(ValueError, match="no tree-sitter grammar"):
        get_language("cobol")
