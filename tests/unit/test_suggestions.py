"""Answers without a model run: typing through the shown suggestion, and the LRU of results."""

from __future__ import annotations

from dg_lsp.server.suggestions import SuggestionMemory

URI = "file:///work/app.py"
BEFORE = "def area(w, h):\n    return "
AFTER = "\n\nprint(area(2, 3))\n"
TEXT = BEFORE + AFTER
OFFSET = len(BEFORE)
SUGGESTION = "w * h"


def _memory(cache_size: int = 64) -> SuggestionMemory:
    memory = SuggestionMemory(cache_size=cache_size)
    memory.remember(URI, 1, TEXT, OFFSET, SUGGESTION)
    return memory


def _typed(typed: str) -> tuple[str, int]:
    return BEFORE + typed + AFTER, OFFSET + len(typed)


def test_typing_the_start_of_the_suggestion_gives_the_rest() -> None:
    memory = _memory()
    for typed, rest in [("w", " * h"), ("w ", "* h"), ("w * ", "h")]:
        text, offset = _typed(typed)
        assert memory.lookup(URI, 2, text, offset) == rest
    assert memory.type_through_hits == 3
    assert memory.cache_hits == 0


def test_typing_something_else_gives_nothing() -> None:
    memory = _memory()
    text, offset = _typed("x")
    assert memory.lookup(URI, 2, text, offset) is None
    text, offset = _typed("w +")
    assert memory.lookup(URI, 2, text, offset) is None
    assert memory.type_through_hits == 0


def test_a_change_elsewhere_gives_nothing() -> None:
    memory = _memory()
    typed = "w *"
    offset = OFFSET + len(typed)
    changed_after = BEFORE + typed + AFTER.replace("2, 3", "4, 5")
    changed_before = BEFORE.replace("area", "size") + typed + AFTER
    inserted_after = BEFORE + typed + "#" + AFTER
    inserted_before = "#" + BEFORE + typed + AFTER
    for text in (changed_after, changed_before, inserted_after):
        assert memory.lookup(URI, 2, text, offset) is None
    assert memory.lookup(URI, 2, inserted_before, offset + 1) is None
    assert memory.type_through_hits == 0


def test_typing_the_whole_suggestion_gives_nothing() -> None:
    memory = _memory()
    text, offset = _typed(SUGGESTION)
    assert memory.lookup(URI, 2, text, offset) is None
    text, offset = _typed(SUGGESTION + " + 1")
    assert memory.lookup(URI, 2, text, offset) is None


def test_cursor_at_or_before_the_shown_position_gives_nothing() -> None:
    memory = _memory()
    assert memory.lookup(URI, 2, TEXT, OFFSET) is None
    assert memory.lookup(URI, 2, TEXT[:-1], OFFSET - 1) is None


def test_other_documents_are_not_typed_through() -> None:
    memory = _memory()
    text, offset = _typed("w")
    assert memory.lookup("file:///work/other.py", 2, text, offset) is None


def test_exact_request_is_a_cache_hit() -> None:
    memory = _memory()
    assert memory.lookup(URI, 1, TEXT, OFFSET) == SUGGESTION
    assert memory.cache_hits == 1
    # The key includes the version: a new version at the same offset is not a hit.
    assert memory.lookup(URI, 2, TEXT, OFFSET) is None
    assert memory.cache_hits == 1


def test_lru_evicts_the_least_recently_used() -> None:
    memory = SuggestionMemory(cache_size=2)
    memory.remember("a", 1, TEXT, OFFSET, "A")
    memory.remember("b", 1, TEXT, OFFSET, "B")
    assert memory.lookup("a", 1, TEXT, OFFSET) == "A"  # "a" is now the most recently used
    memory.remember("c", 1, TEXT, OFFSET, "C")
    assert memory.lookup("b", 1, TEXT, OFFSET) is None
    assert memory.lookup("a", 1, TEXT, OFFSET) == "A"
    assert memory.lookup("c", 1, TEXT, OFFSET) == "C"
    memory.remember("d", 1, TEXT, OFFSET, "D")
    assert memory.lookup("a", 1, TEXT, OFFSET) is None
    assert memory.lookup("c", 1, TEXT, OFFSET) == "C"
    assert memory.lookup("d", 1, TEXT, OFFSET) == "D"


def test_remembering_the_same_key_replaces_it() -> None:
    memory = SuggestionMemory(cache_size=2)
    memory.remember(URI, 1, TEXT, OFFSET, "old")
    memory.remember(URI, 1, TEXT, OFFSET, "new")
    memory.remember("other", 1, TEXT, OFFSET, "other")
    assert memory.lookup(URI, 1, TEXT, OFFSET) == "new"
    assert memory.lookup("other", 1, TEXT, OFFSET) == "other"


def test_cache_size_zero_caches_nothing_but_still_types_through() -> None:
    memory = _memory(cache_size=0)
    assert memory.lookup(URI, 1, TEXT, OFFSET) is None
    text, offset = _typed("w")
    assert memory.lookup(URI, 2, text, offset) == " * h"


def test_forget_drops_one_document() -> None:
    memory = _memory()
    memory.remember("other", 1, TEXT, OFFSET, "O")
    memory.forget(URI)
    assert memory.lookup(URI, 1, TEXT, OFFSET) is None
    text, offset = _typed("w")
    assert memory.lookup(URI, 2, text, offset) is None
    assert memory.lookup("other", 1, TEXT, OFFSET) == "O"
    memory.forget("never-seen")  # no error


def test_clear_drops_everything() -> None:
    memory = _memory()
    memory.remember("other", 1, TEXT, OFFSET, "O")
    memory.clear()
    assert memory.lookup(URI, 1, TEXT, OFFSET) is None
    assert memory.lookup("other", 1, TEXT, OFFSET) is None
    text, offset = _typed("w")
    assert memory.lookup(URI, 2, text, offset) is None
