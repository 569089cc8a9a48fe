"""The API service's side of a tracking task: clip in, masks, manifest and preview out on S3.

:meth:`TrackJobs.run` checks the request and the clip's header here (a wrong field, not a video, a
clip over the limits: answered before the model service is involved), sends the clip to the model
service and reads its stream of records (``messages.py``): one per processed frame, with each
object's mask as bits. Each mask becomes a PNG under ``<prefix><folder>/<object>/<frame>.png`` (the
frame zero-padded to 6 digits; the folder a fresh :func:`storage.unique_name` per run, never the
task id, which would let whoever sees a mask's URL ask about the task), uploaded in parallel in
bounded batches while the stream goes on,
and a manifest entry (box, area, and COCO RLE when asked). The masks' bits also go to a temporary
file, from which the preview MP4 is drawn once tracking is done, on the frames of the one open of
the clip this side makes (held meanwhile: its decoder keeps the few frames it has in flight); then
the preview and the manifest go to S3. Memory stays bounded by a few frames' masks whatever the clip's length: a batch waiting
to upload holds its sender, and so, through the connection, the model service.

Progress and cancel requests go through :class:`sam2_api.api.task_board.TaskBoard`; within half a second
of a cancel, the task stops reading the model service's stream (:class:`ModelStream`, which no other
call can cut off) and passes the cancel on (``cancel_track``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import anyio

from .. import errors, video
from ..config import Settings
from .segment import _unreachable
from ..messages import (
    Failure, RecordReader, TrackDecoding, TrackedFrame, TrackEnd, TrackPrompt, TrackQueued, TrackSpec, TrackStarted,
)
from .image_urls import ImageSources
from .storage import MaskStore, Upload, shared_s3_client, unique_name
from .task_board import TaskBoard
from .track_masks import MaskUploads, TrackedMasks
from .track_stream import ModelStream, event_loop_token
from .fields.common import parse_flag, parse_formats
from .fields.track import (
    PREVIEW_NOT_MADE, TRACK_FORMATS, TrackResponse, parse_frame_count, parse_track_objects, parse_video_url,
)
from .web_fetch import WebFetcher

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.25
CANCEL_POLL_S = 0.5


class TrackModel(Protocol):
    """The model service as the tracking task sees it (``service.SAM2Model``)."""

    def track(self, video: bytes, spec: TrackSpec) -> Iterator[bytes]: ...

    def cancel_track(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class TrackRequest:
    """A tracking request, its fields checked (``fields/track.py``)."""

    upload: bytes | None
    url: str | None
    objects: int
    prompts: list[TrackPrompt]
    start_frame_index: int | None = None
    max_frames: int | None = None
    reverse: bool = False
    formats: tuple[str, ...] = ()
    model: str | None = None  # the served size's id (Settings.model_for); None: the default

    @classmethod
    def parse(cls, upload: bytes | None, video_url: Any, objects: Any, start_frame_index: Any, max_frames: Any,
              reverse: Any, formats: Any, model: str | None = None) -> "TrackRequest":
        count, prompts = parse_track_objects(objects)
        return cls(upload=upload, url=parse_video_url(video_url), objects=count, prompts=prompts,
                   start_frame_index=parse_frame_count(start_frame_index, "start_frame_index", 0),
                   max_frames=parse_frame_count(max_frames, "max_frames", 1),
                   reverse=parse_flag(reverse, "reverse", default=False),
                   formats=parse_formats(formats, TRACK_FORMATS), model=model)


class TrackJobs:
    def __init__(self, model: TrackModel, store: MaskStore, sources: ImageSources, board: TaskBoard,
                 limits: video.VideoLimits, max_bytes: int) -> None:
        self.model = model
        self.store = store
        self.sources = sources  # for video_url, bounded by max_bytes
        self.board = board
        self.limits = limits
        self.max_bytes = max_bytes

    def run(self, task_id: str, request: TrackRequest, tenant: str | None = None) -> TrackResponse:
        """Track, store, and say where everything went; our errors as :class:`errors.RequestError`.
        ``tenant``: the API key's tenant id, whose turn the clip takes in the tracker's queue."""
        try:
            response = self._run(task_id, request, tenant)
        except errors.TrackingCanceled:
            self.board.update(task_id, "canceled")
            raise
        except BaseException:
            self.board.update(task_id, "failed")
            raise
        self.board.update(task_id, "completed")
        return response

    def _run(self, task_id: str, request: TrackRequest, tenant: str | None) -> TrackResponse:
        if not self.store.enabled:
            raise errors.StorageUnavailable(
                f"video tracking stores its masks on S3, and none is configured here ({self.store.disabled_reason})")
        data = self._clip(request)
        # One open of the clip on this side: its header and first frame checked now (415, 413 or
        # 400 without the model service), its frames read on from there for the preview.
        info, frames = video.decode(data, self.limits)
        with contextlib.closing(frames):
            return self._tracked(task_id, request, tenant, data, info, frames)

    def _tracked(self, task_id: str, request: TrackRequest, tenant: str | None, data: bytes, info: video.ClipInfo,
                 frames: Iterator) -> TrackResponse:
        spec = TrackSpec(job_id=task_id, tenant=tenant, objects=request.objects, prompts=request.prompts,
                         start_frame_index=request.start_frame_index, max_frames=request.max_frames,
                         reverse=request.reverse, model=request.model)
        spec.check_fits(info.width, info.height)  # a 400 now, without the model service
        self.board.update(task_id, "queued")
        folder = unique_name()
        with (tempfile.TemporaryDirectory(prefix="sam2-track-") as workdir, _CancelWatch(self, task_id) as watch,
              contextlib.closing(TrackedMasks(os.path.join(workdir, "masks.bits"))) as tracked):
            self._track(spec, data, request.formats, watch, tracked, folder)
            self.board.update(task_id, "storing")
            preview = self._preview(folder, frames, tracked, os.path.join(workdir, "preview.mp4"), watch)
        started = tracked.started
        manifest = {
            "width": started.width, "height": started.height, "fps": started.fps,
            "clip_frames": started.clip_frames, "first_frame": started.first_frame, "last_frame": started.last_frame,
            "reverse": request.reverse, "formats": list(request.formats), "preview_url": preview.url,
            "objects": [{"index": index, "prompts": [
                {"frame_index": p.frame_index, **p.prompt.model_dump(exclude_none=True)}
                for p in request.prompts if p.object_index == index]} for index in range(request.objects)],
            "frames": [tracked.entries[index] for index in sorted(tracked.entries)],
        }
        manifest_url = self.store.put_named(f"{folder}/manifest.json", json.dumps(manifest).encode(),
                                            "application/json").url
        if manifest_url is None:
            raise errors.StorageUnavailable("the manifest could not be stored on S3 (see the server log); retry the task")
        return TrackResponse(
            manifest_url=manifest_url, preview_url=preview.url, preview_error=preview.error, frames=len(tracked.entries),
            objects=request.objects,
            width=started.width, height=started.height, fps=started.fps, clip_frames=started.clip_frames,
            first_frame=started.first_frame, last_frame=started.last_frame,
        )

    def _clip(self, request: TrackRequest) -> bytes:
        if (request.upload is None) == (request.url is None):
            raise errors.InvalidField("send the clip as `video` (a file) or `video_url`, one of the two")
        if request.upload is not None:
            if len(request.upload) > self.max_bytes:
                raise errors.VideoTooLarge(f"the video is over {self.max_bytes} bytes (SAM2_VIDEO_MAX_UPLOAD_BYTES)")
            return request.upload
        try:
            return self.sources.fetch(request.url, field="video_url")
        except errors.ImageTooLarge:  # the sources' bound, max_bytes, is the clip's
            raise errors.VideoTooLarge(
                f"the video at video_url is over {self.max_bytes} bytes (SAM2_VIDEO_MAX_UPLOAD_BYTES)") from None

    def _track(self, spec: TrackSpec, data: bytes, formats: tuple[str, ...], watch: _CancelWatch,
               tracked: TrackedMasks, folder: str) -> None:
        """Fill ``tracked`` from the model service's stream, uploading each frame's masks under ``folder``."""
        uploads = MaskUploads(self.store)
        reader = RecordReader()
        ended = False
        last_progress = 0.0
        stream = ModelStream(self.model, data, spec)
        try:
            watch.stop_on_cancel(stream.close)  # a cancel ends the read at once, not at the next chunk
            for chunk in stream:
                watch.check()
                for record in reader.feed(chunk):
                    if isinstance(record, TrackQueued):
                        self.board.update(spec.job_id, "queued", queue_position=record.position)
                    elif isinstance(record, TrackDecoding):
                        self.board.update(spec.job_id, "decoding")
                    elif isinstance(record, TrackStarted):
                        tracked.started = record
                        self.board.update(spec.job_id, "tracking", frames_done=0, frames_total=record.frames)
                    elif isinstance(record, TrackedFrame):
                        tracked.add(record, folder, formats, uploads)
                        now = time.monotonic()
                        if now - last_progress >= PROGRESS_EVERY_S or len(tracked.entries) == tracked.started.frames:
                            self.board.update(spec.job_id, "tracking", frames_done=len(tracked.entries))
                            last_progress = now
                    elif isinstance(record, Failure):
                        raise record.error()
                    elif isinstance(record, TrackEnd):
                        ended = True
        except errors.RequestError:
            raise
        except Exception as exc:
            if _unreachable(exc):
                log.warning("the model service is unreachable: %s", type(exc).__name__)
                raise errors.ModelUnavailable("the model service is not reachable right now; retry shortly") from exc
            raise
        finally:
            stream.close()
            uploads.close()
        watch.check()
        if not ended or tracked.started is None:
            raise errors.ModelUnavailable("the model service ended the tracking job early (restarted?); retry the task")

    def _preview(self, folder: str, frames: Iterator, tracked: TrackedMasks, path: str, watch: _CancelWatch) -> Upload:
        """The preview's URL, or why there is none (not made, or not stored: the masks are what counts).
        ``frames``: the clip's, from its first, as :func:`video.decode` gives them."""
        try:
            return self._make_preview(folder, frames, tracked, path, watch)
        except errors.TrackingCanceled:
            raise
        except Exception:
            log.exception("the preview of %s could not be made", folder)
            return Upload(None, PREVIEW_NOT_MADE)

    def _make_preview(self, folder: str, frames: Iterator, tracked: TrackedMasks, path: str,
                      watch: _CancelWatch) -> Upload:
        started = tracked.started
        low, high = sorted((started.first_frame, started.last_frame))
        writer = video.PreviewWriter(path, started.width, started.height, started.fps)
        try:
            for index, frame in enumerate(frames):
                if index > high:
                    break
                if index >= low:
                    writer.add(frame, tracked.masks(index))
                if index % 16 == 0:
                    watch.check()
        finally:
            writer.close()
        with open(path, "rb") as mp4:
            return self.store.put_named(f"{folder}/preview.mp4", mp4.read(), "video/mp4")


class _CancelWatch:
    """Polls the board for a cancel request while a task runs; on one, makes :meth:`check` raise,
    ends the read of the model service's stream (:meth:`stop_on_cancel`), and tells the model
    service (its job stops after the current frame)."""

    def __init__(self, jobs: TrackJobs, task_id: str) -> None:
        self._jobs = jobs
        self._task_id = task_id
        self._done = threading.Event()
        self._loop = event_loop_token()  # BentoML's sync clients work only in its event loop's workers
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self.canceled = False

    def stop_on_cancel(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` (from the watch's thread) on a cancel, at once if there was one already."""
        with self._lock:
            self._stop = stop
            canceled = self.canceled
        if canceled:
            stop()

    def __enter__(self) -> _CancelWatch:
        threading.Thread(target=self._watch, name="track-cancel-watch", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(CANCEL_POLL_S):
            if self._jobs.board.cancel_requested(self._task_id):
                with self._lock:
                    self.canceled = True
                    stop = self._stop
                try:
                    if stop is not None:
                        stop()  # first: the task ends now, even if the model service does not answer
                    cancel = functools.partial(self._jobs.model.cancel_track, job_id=self._task_id)
                    if self._loop is None:
                        cancel()
                    else:  # from one of the loop's worker threads, where BentoML's client works
                        anyio.from_thread.run(anyio.to_thread.run_sync, cancel, token=self._loop)
                except Exception as exc:  # the closed stream or the job's stall timeout end the job anyway
                    log.warning("the cancel of %s: %s: %s", self._task_id, type(exc).__name__, exc)
                return

    def check(self) -> None:
        if self.canceled:
            raise errors.TrackingCanceled(f"task {self._task_id} was canceled")


def build_track_jobs(settings: Settings, model: TrackModel, store: MaskStore, board_path: str) -> TrackJobs:
    """The tracking task's side of the API service, storing where ``store`` does; ``video_url`` is
    read as ``image_url`` is, within the clip's own size and time bounds."""
    max_bytes = settings.sam2_video_max_upload_bytes
    s3 = shared_s3_client(settings.aws_region, settings.s3_endpoint_url)  # the mask store's too
    sources = ImageSources(s3, settings.input_buckets, max_bytes,
                           web=WebFetcher(max_bytes=max_bytes, timeout_s=settings.sam2_video_body_timeout_s))
    return TrackJobs(model, store, sources, TaskBoard(board_path), settings.video_limits, max_bytes)
