"""Cross-request micro-batching of the image encoder.

When several new images arrive together, one encoder call over all of them can keep a GPU busier
than one call each. Requests hand their image to :class:`EncoderBatcher`, whose single thread
waits up to ``max_wait`` seconds after the first arrival for up to ``max_batch`` images, runs
:meth:`Segmenter.encode_batch`, and hands each request its own embedding. Off (``max_batch`` 1)
unless ``SAM2_ENCODER_BATCH`` says otherwise; docs/PERFORMANCE.md has the measurements.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from .segmenter import Embedding, Segmenter


class EncoderBatcher:
    def __init__(self, segmenter: Segmenter, max_batch: int, max_wait: float) -> None:
        self.segmenter = segmenter
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: queue.Queue[tuple[np.ndarray, Future[Embedding]]] = queue.Queue()
        threading.Thread(target=self._run, name="encoder-batcher", daemon=True).start()

    def encode(self, image: np.ndarray) -> Embedding:
        """The embedding of ``image``, computed in a batch with whatever else is waiting."""
        done: Future[Embedding] = Future()
        self._queue.put((image, done))
        return done.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                embeddings = self.segmenter.encode_batch([image for image, _ in batch])
            except Exception as exc:  # every waiter learns why, and the batcher lives on
                for _, done in batch:
                    done.set_exception(exc)
                continue
            for (_, done), embedding in zip(batch, embeddings):
                done.set_result(embedding)
