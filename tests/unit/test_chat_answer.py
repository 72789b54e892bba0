"""Cleaning a chat answer down to code: thinking blocks, fences, the hole marker, echoed context."""

from __future__ import annotations

import pytest

from dg_lsp.prompting.answer import (
    clean_chat_answer,
    drop_repeated_prefix,
    drop_repeated_suffix,
    strip_fences,
    strip_thinking,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<|channel>thought\nthe sum<channel|>a + b", "a + b"),
        ("<think>why</think>a + b", "a + b"),
        ("x = 1<|channel>thought\nmore<channel|>\ny = 2", "x = 1\ny = 2"),
        ("<|channel>thought\nstill thinking", ""),  # a draft in the middle of its thought
        ("thought began in the prompt<channel|>a + b", "a + b"),
        ("a + b", "a + b"),
    ],
)
def test_thinking_blocks_are_removed(raw: str, expected: str) -> None:
    assert strip_thinking(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("```python\nreturn a + b\n```", "return a + b"),
        ("\n```py\n    x = 1\n    y = 2\n```\n", "    x = 1\n    y = 2"),
        ("Here is the code:\n```\nx = 1\n```\nIt sets x.", "x = 1"),
        ("```python\nx = 1", "x = 1"),  # a draft whose closing fence has not appeared yet
        ("x = 1\n```", "x = 1"),  # a lone closing fence
        ("````md\n```py\nx\n```\n````", "```py\nx\n```"),  # a longer outer fence keeps inner ones
        ("return a + b", "return a + b"),
        (" + 1", " + 1"),  # leading blanks of a plain answer are meaningful
    ],
)
def test_code_fences_are_removed(raw: str, expected: str) -> None:
    assert strip_fences(raw) == expected


def test_restated_prefix_is_removed() -> None:
    prefix = "import math\n\ndef mean(xs):\n    total = "
    assert drop_repeated_prefix("    total = sum(xs)", prefix) == "sum(xs)"
    assert drop_repeated_prefix("total = sum(xs)", prefix) == "sum(xs)"  # without its indentation
    assert drop_repeated_prefix("def mean(xs):\n    total = sum(xs)", prefix) == "sum(xs)"
    assert drop_repeated_prefix("sum(xs)", prefix) == "sum(xs)"
    # The indentation the cursor already stands at is not repeated.
    assert drop_repeated_prefix("    return 1", "def f():\n    ") == "return 1"
    # Too little to be sure it is an echo: kept.
    assert drop_repeated_prefix("(b)", "f(a") == "(b)"


def test_restated_suffix_is_removed() -> None:
    suffix = "\n    return total / len(xs)\n"
    assert drop_repeated_suffix("sum(xs)\n    return total / len(xs)\n", suffix) == "sum(xs)"
    assert drop_repeated_suffix("sum(xs)\n    return total / len(xs)", suffix) == "sum(xs)"
    assert drop_repeated_suffix("sum(xs)", suffix) == "sum(xs)"
    # A closing bracket that may belong to the answer itself is not taken for an echo.
    assert drop_repeated_suffix("foo(a)", ")\n") == "foo(a)"


def test_clean_chat_answer_runs_every_step() -> None:
    raw = "<|channel>thought\nhmm<channel|>```python\ndef add(a, b):\n    return a + b<HOLE>\n```"
    assert clean_chat_answer(raw, "def add(a, b):\n    ", "\n") == "return a + b"
