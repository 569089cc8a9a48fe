"""The embedding cache: LRU by entries and bytes, one computation per key under races."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.segmenter import Embedding


def embedding(n_floats: int = 256) -> Embedding:
    """An embedding of exactly ``4 * n_floats`` bytes."""
    return Embedding(image_embed=torch.zeros(n_floats), high_res_feats=(), orig_hw=(1, 1))


def test_nbytes_counts_every_level():
    value = Embedding(torch.zeros(1, 256, 64, 64), (torch.zeros(1, 32, 256, 256), torch.zeros(1, 64, 128, 128)), (9, 9))
    assert value.nbytes == 4 * (256 * 64 * 64 + 32 * 256 * 256 + 64 * 128 * 128)  # 16 MiB


def test_hit_returns_the_same_value_without_computing():
    cache = EmbeddingCache(max_entries=4, max_bytes=10**6)
    first = embedding()
    assert cache.get_or_compute("a", lambda: first) == (first, False)
    assert cache.get_or_compute("a", lambda: pytest.fail("computed twice")) == (first, True)
    assert cache.get("a") is first and cache.get("b") is None


def test_least_recently_used_goes_first_when_entries_overflow():
    cache = EmbeddingCache(max_entries=2, max_bytes=10**6)
    for key in "ab":
        cache.get_or_compute(key, embedding)
    cache.get("a")  # a is now more recent than b
    cache.get_or_compute("c", embedding)
    assert cache.get("a") is not None and cache.get("c") is not None and cache.get("b") is None
    assert len(cache) == 2


def test_byte_bound_evicts_and_too_big_values_are_not_kept():
    cache = EmbeddingCache(max_entries=100, max_bytes=3 * 1024)
    for key in "abcd":
        cache.get_or_compute(key, lambda: embedding(256))  # 1 KiB each
    assert len(cache) == 3 and cache.nbytes == 3 * 1024 and cache.get("a") is None
    value, hit = cache.get_or_compute("huge", lambda: embedding(1024))  # 4 KiB > bound
    assert not hit and value is not None and cache.get("huge") is None and len(cache) == 3


def test_zero_entries_disables_caching():
    cache = EmbeddingCache(max_entries=0, max_bytes=10**6)
    cache.get_or_compute("a", embedding)
    assert cache.get("a") is None and len(cache) == 0


def test_racing_first_requests_compute_once():
    cache = EmbeddingCache(max_entries=4, max_bytes=10**6)
    calls = []
    gate = threading.Event()

    def slow():
        calls.append(1)
        gate.wait(5)
        return embedding()

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(cache.get_or_compute, "same", slow) for _ in range(8)]
        time.sleep(0.2)
        gate.set()
        results = [f.result() for f in futures]
    assert len(calls) == 1
    assert len({id(value) for value, _ in results}) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 7


def test_a_failed_computation_reaches_waiters_and_is_not_cached():
    cache = EmbeddingCache(max_entries=4, max_bytes=10**6)
    gate = threading.Event()

    def failing():
        gate.wait(5)
        raise ValueError("bad image")

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(cache.get_or_compute, "k", failing) for _ in range(3)]
        time.sleep(0.2)
        gate.set()
        for future in futures:
            with pytest.raises(ValueError, match="bad image"):
                future.result()
    assert cache.get_or_compute("k", embedding)[1] is False  # the next try computes afresh


def test_a_lookup_during_the_first_computation_waits_for_it():
    """A click on an image whose first request is still in the encoder is a hit, not a second upload."""
    cache = EmbeddingCache(max_entries=4, max_bytes=10**6)
    gate = threading.Event()
    value = embedding()
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(cache.get_or_compute, "k", lambda: gate.wait(5) and value)
        time.sleep(0.2)
        lookup = pool.submit(cache.get, "k")
        time.sleep(0.2)
        assert not lookup.done()
        gate.set()
        assert lookup.result() is value and first.result() == (value, False)
    assert cache.get("missing") is None
