"""The model service's side of video tracking: SAM 2's video predictor over a decoded clip, a frame
at a time on the device thread, each frame's masks out as bits.

Meta's predictor on our frames, and its memory, are :mod:`sam2_api.model.video_session`; the line of
clips and each job's lifetime, :mod:`sam2_api.model.track_queue`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor

from .. import errors, metrics, video
from ..config import Settings
from .device_thread import DeviceThread, Lane
from .model_set import ModelSet
from ..messages import (
    Failure, TrackDecoding, TrackEnd, TrackQueued, TrackSpec, TrackStarted, write_record,
)
from ..timing import StageTimer
from .track_queue import MAX_WAITING_JOBS, MAX_WAITING_PER_TENANT, JobClosed, TrackJob, Turns
from .video_session import (
    FrameStore, Session, build_video_model, new_inference_state, plan_offload, processed_range, state_bytes,
)

log = logging.getLogger(__name__)

STALL_S = 120.0  # a job whose stream nobody has read for this long is abandoned
QUEUE_HEARTBEAT_S = 1.0
DECODE_REPORT_EVERY = 30  # frames between TrackDecoding records
REAPER_INTERVAL_S = 5.0


@dataclass(frozen=True)
class TrackerSettings:
    limits: video.VideoLimits
    offload: str
    gpu_bytes: int
    job_timeout_s: float
    stall_s: float = STALL_S
    max_waiting_per_tenant: int = MAX_WAITING_PER_TENANT
    overrides: tuple[str, ...] = ()  # hydra overrides of the model config, as the image model was built


class Tracker:
    """Tracks objects through clips (:meth:`stream`), one clip at a time, on the image model's
    device thread and weights; the video predictor is built on first use. With ``sizes``, a clip's
    ``spec.model`` picks the size whose weights track it (``device`` and ``config`` are then the default's)."""

    def __init__(self, device: DeviceThread, config: str, settings: TrackerSettings, sizes: "ModelSet | None" = None) -> None:
        self.device = device
        self.config = config
        self.settings = settings
        self.sizes = sizes
        self._model: SAM2VideoPredictor | None = None
        self._model_lock = threading.Lock()
        self._turns = Turns(MAX_WAITING_JOBS, settings.max_waiting_per_tenant)
        self._jobs: dict[str, TrackJob] = {}
        self._jobs_lock = threading.Lock()  # also guards the jobs' gauge states
        threading.Thread(target=self._reap, name="sam2-track-reaper", daemon=True).start()

    @property
    def model(self) -> SAM2VideoPredictor:
        with self._model_lock:
            if self._model is None:
                image_model = self.device.segmenter.model
                self._model = self.device.call(
                    lambda: build_video_model(self.config, image_model, self.settings.overrides), "video_model")
                log.info("built SAM 2's video predictor (%s) on the image model's weights", self.config)
            return self._model

    def cancel(self, job_id: str) -> bool:
        """End the job ``job_id`` (its stream stops, its memory is freed); False if none runs here."""
        with self._jobs_lock:
            job = self._jobs.get(job_id)
        if job is None:
            return False
        self._end(job, "canceled")
        return True

    def stream(self, data: bytes, spec: TrackSpec) -> Iterator[bytes]:
        """The records of tracking ``spec`` through the clip ``data`` (see ``messages.py``)."""
        job = TrackJob(spec.job_id, time.monotonic() + self.settings.job_timeout_s, spec.tenant)
        with self._jobs_lock:
            if spec.job_id in self._jobs:
                raise ValueError(f"job {spec.job_id} is already running")
            self._jobs[spec.job_id] = job
            self._count(job, "queued")
        timer = StageTimer()
        try:
            self._turns.join(job)  # refused (503) beyond the waiting room or the tenant's share of it
            with timer.stage("track_queue"):
                while position := self._turns.wait(job, QUEUE_HEARTBEAT_S):
                    with job.step():
                        pass
                    yield write_record(TrackQueued(position=position))
            with self._jobs_lock:
                self._count(job, "running")
            with job.step():
                pass
            yield from self._run(job, data, spec, timer)
            yield write_record(TrackEnd(seconds=timer.seconds))
        except errors.RequestError as exc:
            yield write_record(Failure.of(exc))
        except torch.OutOfMemoryError:
            log.warning("tracking job %s: the device ran out of memory", job.id)
            yield write_record(Failure.of(errors.ModelUnavailable(
                "the GPU ran out of memory tracking this clip: retry later, or track fewer frames (max_frames) or "
                "objects; the operator can lower SAM2_VIDEO_GPU_BYTES so that more of a clip stays in host memory")))
        except JobClosed as closed:
            log.info("tracking job %s ended: %s", job.id, closed)
            yield write_record(closed.failure())  # the reader learns at once that nothing more comes
        finally:
            self._end(job, "finished")

    def _run(self, job: TrackJob, data: bytes, spec: TrackSpec, timer: StageTimer) -> Iterator[bytes]:
        model = self.model if self.sizes is None else self.sizes.get(spec.model).video_model(self.settings.overrides)
        lane = Lane(spec.tenant, "track")  # each frame takes its turn on the device with its key's other work
        start = _default_start(spec)
        first, last = processed_range(self.settings.limits.max_frames, start, spec.max_frames, spec.reverse)
        low, high = min(first, last), max(first, last)
        job.store = FrameStore(model.image_size, model.device)
        count = 0
        with timer.stage("video_decode"):
            info, frames = video.decode(data, self.settings.limits)
        try:
            while True:
                with job.step(), timer.stage("video_decode"):
                    batch = [frame for _, frame in zip(range(DECODE_REPORT_EVERY), frames)]
                    for frame in batch:
                        if low <= count <= high:
                            job.store.put(count, frame)
                        count += 1
                if batch:
                    yield write_record(TrackDecoding(frames_decoded=count))
                if len(batch) < DECODE_REPORT_EVERY:
                    break
        finally:
            frames.close()
        first, last = _checked_range(spec, start, count, info.width, info.height)
        if model.device.type == "cpu":
            _check_prompted_at_start(spec, start)
        store = job.store
        offload_video, offload_state = plan_offload(
            self.settings.offload, model.device, store.nbytes,
            state_bytes(model, spec.objects, _most_prompted_frames(spec)), self.settings.gpu_bytes,
        )

        def on_device() -> dict:  # device memory is the device thread's, as every model call is
            if not offload_video:
                store.move_to(model.device)
            return new_inference_state(model, store, count, info.height, info.width, offload_video, offload_state)

        job.session = Session(
            model, self.device.call(on_device, "track_setup", timer, lane),
            spec.prompts, spec.objects, start, spec.max_frames, spec.reverse, self.device.segmenter.pack,
        )
        job.store = store = None  # the session holds the frames now
        yield write_record(TrackStarted(clip_frames=count, width=info.width, height=info.height, fps=info.fps,
                                        first_frame=first,
                                        last_frame=last, offload_video=offload_video, offload_state=offload_state))
        with job.step():
            self.device.call(lambda: self._on_device(job, Session.add_prompts), "track_prompts", timer, lane)
        while True:
            with job.step():
                frame = self.device.call(lambda: self._on_device(job, Session.next_frame), "track_frame", timer, lane)
            if frame is None:
                return
            metrics.VIDEO_FRAMES.inc()
            yield write_record(frame)

    def _on_device(self, job: TrackJob, work: Callable[[Session], object]) -> object:
        session = job.session
        if session is None:  # closed while this waited for the device thread
            raise JobClosed(job.closed or "closed")
        with self.device.segmenter.autocast():
            return work(session)

    def _end(self, job: TrackJob, reason: str) -> None:
        """Close ``job`` and forget it (from any thread; again is harmless): its memory is freed
        now, its stream ends at its next record, the next job in line starts."""
        job.close(reason)
        with self._jobs_lock:
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
            self._count(job, None)
        self._turns.leave(job)
        if self.device.segmenter.device.type == "cuda":
            torch.cuda.empty_cache()  # the job's frames and state go back to the device, not to our cache

    @staticmethod
    def _count(job: TrackJob, state: str | None) -> None:
        """Move ``job`` to ``state`` in the sam2_video_jobs gauge (None: out of it); under the jobs' lock."""
        if state is not None and job.closed is not None:
            return  # ended meanwhile: it stays out
        if job.counted is not None:
            metrics.VIDEO_JOBS.labels(state=job.counted).dec()
        if state is not None:
            metrics.VIDEO_JOBS.labels(state=state).inc()
        job.counted = state

    def _reap(self) -> None:
        """End jobs whose stream nobody reads any more, or that outlived their deadline."""
        while True:
            time.sleep(min(REAPER_INTERVAL_S, self.settings.stall_s / 2))
            now = time.monotonic()
            with self._jobs_lock:
                jobs = list(self._jobs.values())
            for job in jobs:
                if job.busy:
                    continue
                if now - job.last_read > self.settings.stall_s:
                    log.warning("tracking job %s: nobody has read its results for %.0f s; ending it",
                                job.id, now - job.last_read)
                    self._end(job, "abandoned")
                elif now > job.deadline:
                    self._end(job, "timed out")


def _default_start(spec: TrackSpec) -> int:
    if spec.start_frame_index is not None:
        return spec.start_frame_index
    frames = [prompt.frame_index for prompt in spec.prompts]
    return max(frames) if spec.reverse else min(frames)


def _most_prompted_frames(spec: TrackSpec) -> int:
    per_object: dict[int, set[int]] = {}
    for prompt in spec.prompts:
        per_object.setdefault(prompt.object_index, set()).add(prompt.frame_index)
    return max(len(frames) for frames in per_object.values())


def _checked_range(spec: TrackSpec, start: int, count: int, width: int, height: int) -> tuple[int, int]:
    """The processed range of a clip of ``count`` frames of ``width × height``; a start, or a
    prompt, outside it or outside the frame is a 400."""
    if start >= count:
        raise errors.InvalidField(f"start_frame_index {start} is outside the clip (frames 0 to {count - 1})")
    if spec.reverse and start == 0:
        raise errors.InvalidField("reverse tracking from frame 0 has no frames to track")
    first, last = processed_range(count, start, spec.max_frames, spec.reverse)
    low, high = min(first, last), max(first, last)
    for prompt in spec.prompts:
        where = f"objects[{prompt.object_index}]: frame_index {prompt.frame_index}"
        if prompt.frame_index >= count:
            raise errors.InvalidField(f"{where} is outside the clip (frames 0 to {count - 1})")
        if not low <= prompt.frame_index <= high:
            raise errors.InvalidField(f"{where} is outside the frames tracked, {first} to {last}")
    spec.check_fits(width, height)
    return first, last


def _check_prompted_at_start(spec: TrackSpec, start: int) -> None:
    """Without CUDA's bf16 autocast, SAM 2's video predictor fails on an object's frames before its
    first prompt: with no object pointer yet, its bf16 memories reach float32 layers alone."""
    prompted = {prompt.object_index for prompt in spec.prompts if prompt.frame_index == start}
    for index in range(spec.objects):
        if index not in prompted:
            raise errors.InvalidField(
                f"objects[{index}] has no prompt on frame {start}, where tracking starts: on the CPU, SAM 2's "
                "video predictor needs every object prompted on that first frame (on a GPU it does not)"
            )


def build_tracker(settings: Settings, sizes: "ModelSet") -> Tracker:
    default = sizes.default
    return Tracker(default.engine.device, default.config, TrackerSettings(
        limits=settings.video_limits, offload=settings.sam2_video_offload, gpu_bytes=settings.sam2_video_gpu_bytes,
        job_timeout_s=settings.sam2_video_job_timeout_s,
        max_waiting_per_tenant=settings.sam2_video_max_waiting_per_key,
    ), sizes)
