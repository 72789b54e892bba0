"""Answers without a model run: typing through the shown suggestion, and a completion cache."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class ShownSuggestion:
    """The last suggestion answered for a document, with the text around its cursor."""

    version: int
    offset: int
    before: str
    after: str
    text: str


class SuggestionMemory:
    """Per-document last suggestion and an LRU of results keyed by (uri, version, offset)."""

    def __init__(self, cache_size: int = 64) -> None:
        self._shown: dict[str, ShownSuggestion] = {}
        self._cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self.cache_size = cache_size
        self.type_through_hits = 0
        self.cache_hits = 0

    def remember(self, uri: str, version: int, text: str, offset: int, suggestion: str) -> None:
        """Record a suggestion answered at ``offset`` of ``text``."""
        self._shown[uri] = ShownSuggestion(version, offset, text[:offset], text[offset:], suggestion)
        if self.cache_size > 0:
            key = (uri, version, offset)
            self._cache[key] = suggestion
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def lookup(self, uri: str, version: int, text: str, offset: int) -> str | None:
        """A suggestion for this request without running the model, or None."""
        key = (uri, version, offset)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        shown = self._shown.get(uri)
        if shown is None or offset <= shown.offset:
            return None
        typed = text[shown.offset : offset]
        if (
            len(typed) < len(shown.text)
            and shown.text.startswith(typed)
            and text.startswith(shown.before)
            and text.endswith(shown.after)
            and len(text) == len(shown.before) + len(typed) + len(shown.after)
        ):
            self.type_through_hits += 1
            return shown.text[len(typed) :]
        return None

    def forget(self, uri: str) -> None:
        """Drop everything about a document (closed, or model swapped)."""
        self._shown.pop(uri, None)
        for key in [k for k in self._cache if k[0] == uri]:
            del self._cache[key]

    def clear(self) -> None:
        """Drop everything."""
        self._shown.clear()
        self._cache.clear()
