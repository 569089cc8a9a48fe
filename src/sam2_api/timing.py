"""Where a request's time goes: named stages, recorded in ``/metrics`` and a ``Server-Timing`` header.

Each process records the stages it runs (the API service: reading the image, decoding it, PNG
encoding, uploading; the model service: queueing for the device, encoder, decoder) in the
``sam2_stage_seconds`` histogram; the model service hands its stages back with its reply, so the
API service can put the whole breakdown into the response's ``Server-Timing`` header.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from . import metrics


class StageTimer:
    """Seconds per stage for one request; safe to add to from several threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        """Record ``seconds`` of ``name`` here and in this process's metrics."""
        metrics.STAGE_SECONDS.labels(stage=name).observe(seconds)
        self.merge({name: seconds})

    def merge(self, seconds: dict[str, float]) -> None:
        """Add stages another process timed (and recorded in its own metrics)."""
        with self._lock:
            for name, value in seconds.items():
                self.seconds[name] = self.seconds.get(name, 0.0) + value

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value: ``name;dur=<milliseconds>`` per stage."""
        return ", ".join(f"{name};dur={value * 1000:.1f}" for name, value in self.seconds.items())
