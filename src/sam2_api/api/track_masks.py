"""A clip's masks as the model service's stream brings them (:mod:`sam2_api.api.track`): each one a PNG
uploaded in bounded parallel batches while the stream goes on, its manifest entry, and its bits in a
spool file for the preview MP4."""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable

from .. import imaging
from ..maskformats import describe
from ..messages import TrackedFrame, TrackStarted
from .storage import FAILED, MaskStore, Upload

log = logging.getLogger(__name__)

UPLOAD_BATCH = 32  # masks per parallel upload (each batch within S3_UPLOAD_DEADLINE)
UPLOADS_QUEUED = 2  # batches waiting while one uploads; the stream waits beyond that


class TrackedMasks:
    """What the stream brought: the clip's header, a manifest entry per frame (mask URLs filled in
    as uploads finish), and every mask's bits in a file for the preview (:meth:`close` frees it)."""

    def __init__(self, spool_path: str) -> None:
        self.started: TrackStarted | None = None
        self.entries: dict[int, dict[str, Any]] = {}
        self._spool = open(spool_path, "w+b")
        self._offsets: dict[int, int] = {}

    def add(self, frame: TrackedFrame, folder: str, formats: tuple[str, ...], uploads: MaskUploads) -> None:
        started = self.started
        objects = []
        self._offsets[frame.frame_index] = self._spool.seek(0, os.SEEK_END)
        for index, bits in enumerate(frame.masks):
            self._spool.write(bits)
            entry = {"mask_url": None, **describe(imaging.unpack_mask(bits, started.height, started.width), formats)}
            objects.append(entry)
            name = f"{folder}/{index}/{frame.frame_index:06d}.png"
            uploads.add(name, lambda bits=bits: imaging.mask_png(bits, started.height, started.width), entry)
        self.entries[frame.frame_index] = {"frame_index": frame.frame_index, "objects": objects}

    def masks(self, frame_index: int) -> list:
        """The objects' ``(H, W)`` bool masks on ``frame_index``, read back from the spool."""
        started = self.started
        size = started.height * ((started.width + 7) // 8)
        objects = len(self.entries[frame_index]["objects"])
        self._spool.seek(self._offsets[frame_index])
        raw = self._spool.read(size * objects)
        return [imaging.unpack_mask(raw[i * size:(i + 1) * size], started.height, started.width) for i in range(objects)]

    def close(self) -> None:
        self._spool.close()


class MaskUploads:
    """PNGs uploaded in batches of :data:`UPLOAD_BATCH` by one background thread (each batch in
    parallel, :meth:`MaskStore.put_named_many`); :meth:`add` waits when :data:`UPLOADS_QUEUED`
    batches are already waiting. Each URL lands in its manifest entry."""

    def __init__(self, store: MaskStore) -> None:
        self._store = store
        self._batch: list[tuple[str, Callable[[], bytes], dict]] = []
        self._queue: queue.Queue = queue.Queue(maxsize=UPLOADS_QUEUED)
        self._thread = threading.Thread(target=self._upload, name="track-uploads", daemon=True)
        self._thread.start()

    def add(self, name: str, make: Callable[[], bytes], entry: dict) -> None:
        self._batch.append((name, make, entry))
        if len(self._batch) >= UPLOAD_BATCH:
            self._queue.put(self._batch)
            self._batch = []

    def close(self) -> None:
        """Upload what is left and wait for every batch."""
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
        self._queue.put(None)
        self._thread.join()

    def _upload(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                stored = self._store.put_named_many([(name, make) for name, make, _ in batch], bulk=True)
            except Exception:  # the masks stay unstored (mask_url null), the task goes on
                log.exception("uploading %d masks failed", len(batch))
                stored = [Upload(None, FAILED)] * len(batch)
            for (_, _, entry), upload in zip(batch, stored):
                entry["mask_url"] = upload.url
                if upload.error is not None:  # as /segment says it: only when mask_url is null
                    entry["mask_error"] = upload.error
