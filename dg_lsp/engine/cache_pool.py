"""Several prompt caches for concurrent requests, each handed to the request it helps most."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import DiffusionGemmaForBlockDiffusion

from dg_lsp.engine.prompt_cache import PromptCache, common_prefix_length


class PromptCachePool:
    """Up to ``capacity`` idle :class:`PromptCache` objects kept between requests.

    A request takes the idle cache sharing the longest prefix with its prompt (the same
    user typing on reuses their own), else a new one; the least recently used idle cache
    is dropped when the pool is full. Caches in use are not counted against ``capacity``.
    """

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, capacity: int = 8, reuse: bool = True) -> None:
        self._model = model
        self._capacity = max(capacity, 0)
        self._reuse = reuse
        self._idle: list[tuple[list[int], PromptCache]] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._idle)

    def acquire(self, prompt: Sequence[int]) -> PromptCache:
        """A cache to encode ``prompt`` into; give it back with :meth:`release`."""
        best, shared = -1, 0
        for index, (ids, _) in enumerate(self._idle):
            common = common_prefix_length(ids, prompt)
            if common > shared:
                best, shared = index, common
        if best >= 0 and self._reuse:
            return self._idle.pop(best)[1]
        return PromptCache(self._model, reuse=self._reuse)

    def release(self, cache: PromptCache, prompt: Sequence[int]) -> None:
        """Return ``cache`` (which now holds ``prompt``) to the idle set."""
        if self._capacity == 0 or not self._reuse:
            return
        self._idle.append((list(prompt), cache))
        while len(self._idle) > self._capacity:
            self._idle.pop(0)

    def clear(self) -> None:
        """Drop every idle cache."""
        self._idle.clear()
