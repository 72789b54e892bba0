"""The prompt-cache pool hands each request the idle cache that shares most of its prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_lsp.engine.cache_pool import PromptCachePool
from dg_lsp.model.loader import LoadedModel, load_model


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, "cpu", "float32")


def test_the_longest_shared_prefix_wins_and_is_reused(loaded: LoadedModel) -> None:
    pool = PromptCachePool(loaded.model, capacity=4)
    alice, bob = list(range(10, 60)), list(range(100, 140))
    a, b = pool.acquire(alice), pool.acquire(bob)
    assert a is not b
    a.encode(alice)
    b.encode(bob)
    pool.release(a, alice)
    pool.release(b, bob)
    typed = bob + [7, 8]  # Bob typed two more tokens
    again = pool.acquire(typed)
    assert again is b
    assert again.encode(typed).reused_tokens == len(bob)
    assert len(pool) == 1


def test_no_shared_prefix_gets_a_fresh_cache(loaded: LoadedModel) -> None:
    pool = PromptCachePool(loaded.model, capacity=4)
    first = pool.acquire([1, 2, 3])
    first.encode([1, 2, 3])
    pool.release(first, [1, 2, 3])
    other = pool.acquire([9, 9, 9])
    assert other is not first and len(pool) == 1


def test_the_least_recently_used_idle_cache_is_dropped(loaded: LoadedModel) -> None:
    pool = PromptCachePool(loaded.model, capacity=2)
    caches = []
    for start in (10, 20, 30):
        ids = list(range(start, start + 5))
        cache = pool.acquire(ids)
        cache.encode(ids)
        caches.append((ids, cache))
    for ids, cache in caches:
        pool.release(cache, ids)
    assert len(pool) == 2
    assert pool.acquire(list(range(10, 15))) is not caches[0][1]  # evicted
    assert pool.acquire(list(range(30, 36))) is caches[2][1]


def test_without_reuse_nothing_is_kept(loaded: LoadedModel) -> None:
    pool = PromptCachePool(loaded.model, capacity=4, reuse=False)
    cache = pool.acquire([1, 2])
    pool.release(cache, [1, 2])
    assert len(pool) == 0
