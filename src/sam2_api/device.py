"""The one thread that drives the model's device.

Every call into the model runs on :class:`DeviceThread`'s single thread, in arrival order: CUDA
state that is per thread (cuBLAS handles and workspaces, autocast, inference mode) is created
once, by the warm-up, instead of by the first request on each of many threads; and the device
never runs two requests' kernels interleaved. Request threads hand in jobs and wait for their
results. New images that queue up together can share one encoder call (``max_batch`` > 1).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import metrics
from .prompts import Prompt
from .segmenter import Embedding, Mask, Segmenter
from .timing import StageTimer


@dataclass
class _Job:
    run: Callable[[], Any] | None  # None: an encode job, run in a batch with its neighbours
    stage: str = "encoder"  # the name its time is recorded under
    image: np.ndarray | None = None
    timer: StageTimer | None = None
    done: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class DeviceThread:
    """Runs :class:`Segmenter` calls on one thread; ``max_batch`` > 1 batches queued encodes,
    waiting up to ``max_wait`` seconds after the first for others to arrive."""

    def __init__(self, segmenter: Segmenter, max_batch: int = 1, max_wait: float = 0.0) -> None:
        self.segmenter = segmenter
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="sam2-device", daemon=True)
        self._thread.start()

    def encode(self, image: np.ndarray, timer: StageTimer) -> Embedding:
        """The embedding of an ``(H, W, 3)`` uint8 RGB image."""
        return self._submit(_Job(run=None, image=image, timer=timer))

    def decode(self, embedding: Embedding, prompts: list[Prompt], timer: StageTimer,
               mask_inputs: Sequence[Any] | None = None) -> list[Mask]:
        """One bit-packed mask per prompt, each with its mask input if any (see
        :meth:`Segmenter.decode_many`)."""
        return self.call(lambda: self.segmenter.decode_many(embedding, prompts, mask_inputs), "decoder", timer)

    def call(self, run: Callable[[], Any], stage: str, timer: StageTimer | None = None) -> Any:
        """``run()`` on the device thread; its time is recorded as ``stage``."""
        return self._submit(_Job(run=run, stage=stage, timer=timer))

    def warm_up(self) -> None:
        """Pay lazy initialisation on the device thread itself, before the first request; with
        batching on, at the largest batch too."""
        self.call(self.segmenter.warm_up, "warm_up")
        if self.max_batch > 1:
            image = np.zeros((64, 64, 3), dtype=np.uint8)
            self.call(lambda: self.segmenter.encode_batch([image] * self.max_batch), "warm_up")

    def _submit(self, job: _Job) -> Any:
        self._queue.put(job)
        return job.done.result()

    def _serve(self) -> None:
        held: list[_Job] = []  # jobs taken off the queue while gathering a batch, run next
        while True:
            job = held.pop(0) if held else self._queue.get()
            if job.run is not None:
                self._run(job)
                continue
            batch = [job]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    other = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                (batch if other.run is None else held).append(other)
            self._encode(batch)

    def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        _record(job, "queue", started - job.queued_at)
        try:
            result = job.run()
        except BaseException as exc:  # the caller gets it; the thread lives on
            job.done.set_exception(exc)
            return
        _record(job, job.stage, time.perf_counter() - started)
        job.done.set_result(result)

    def _encode(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            _record(job, "queue", started - job.queued_at)
        try:
            embeddings = self.segmenter.encode_batch([job.image for job in batch])
            self.segmenter.synchronize()  # so that the time below is the encoder's
        except BaseException as exc:  # every waiter learns why
            for job in batch:
                job.done.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        metrics.ENCODER_BATCH_SIZE.observe(len(batch))
        for job, embedding in zip(batch, embeddings):
            _record(job, "encoder", elapsed)
            job.done.set_result(embedding)


def _record(job: _Job, stage: str, seconds: float) -> None:
    if job.timer is not None:
        job.timer.add(stage, seconds)
