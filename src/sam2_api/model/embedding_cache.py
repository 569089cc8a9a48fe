"""The embedding cache: an image seen before skips the encoder.

Keys are content hashes of the uploaded bytes (or a client's ``image_id``); entries are bounded by
count and by bytes, least recently used out first. Requests that race for the same new key
compute it once: the first runs the encoder, the others wait for its result.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

from .. import metrics
from .segmenter import Embedding


class EmbeddingCache:
    """A thread-safe LRU of :class:`Embedding` values with single-flight computation."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Embedding] = OrderedDict()
        self._pending: dict[str, Future[Embedding]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is cached or being computed (neither a use nor a hit)."""
        with self._lock:
            return key in self._entries or key in self._pending

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> Embedding | None:
        """The cached embedding (now most recently used), or None; when another request is
        computing it right now, its result (or None if that computation fails)."""
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
                metrics.CACHE_HITS.inc()
                return embedding
            pending = self._pending.get(key)
        if pending is None or pending.exception() is not None:
            return None
        metrics.CACHE_HITS.inc()
        return pending.result()

    def get_or_compute(self, key: str, compute: Callable[[], Embedding]) -> tuple[Embedding, bool]:
        """The embedding for ``key`` and whether it was a hit; ``compute`` runs at most once per key
        at a time, and its exception reaches every waiter."""
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
                metrics.CACHE_HITS.inc()
                return embedding, True
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
        if not owner:
            embedding = pending.result()
            metrics.CACHE_HITS.inc()
            return embedding, True

        metrics.CACHE_MISSES.inc()
        try:
            embedding = compute()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            self._insert(key, embedding)
        pending.set_result(embedding)
        return embedding, False

    def _insert(self, key: str, embedding: Embedding) -> None:
        size = embedding.nbytes
        if self.max_entries < 1 or size > self.max_bytes:
            return
        self._entries[key] = embedding
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            metrics.CACHE_EVICTIONS.inc()
