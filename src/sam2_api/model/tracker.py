"""The model service's side of video tracking: SAM 2's video predictor over a decoded clip, a frame
at a time on the device thread, each frame's masks out as bits.

The computation is Meta's own: ``SAM2VideoPredictor.add_new_points_or_box`` for every prompt, then
``propagate_in_video``, on a predictor built as ``build_sam2_video_predictor`` builds it (Meta's
video settings) whose parameters are the image model's own tensors (no second copy of the
weights). The masks equal the predictor's, pixel for pixel, on the same decoded frames
(tests/unit/test_tracking.py). Three things differ, none of them in what is computed:

- **Frames.** Meta's loader keeps every frame as a normalised ``3×S×S`` float32 tensor (12 MiB a
  frame at S = 1024). :class:`FrameStore` keeps the processed range's frames as uint8, resized by
  the same PIL call (3 MiB a frame), and normalises a frame with the very float operations of
  ``load_video_frames`` when the model reads it, so the model sees bit-identical input.
- **State.** The predictor keeps every tracked frame's memory for later clicks. A job makes no
  later clicks, so once a frame is further back than any later frame reads (SAM 2 attends to the
  last ``num_maskmem`` frames' memories and ``max_obj_ptrs_in_encoder`` frames' object pointers;
  prompted frames are always kept), its outputs are dropped: the state stays at a few MiB per
  object however long the clip.
- **Scheduling.** Each frame is one job on :class:`sam2_api.model.device_thread.DeviceThread`, so image
  requests keep being served between a clip's frames; clips themselves queue, one tracked at a
  time per model replica, taking turns across API keys (:class:`_Turns`): each key may have at
  most ``max_waiting_per_tenant`` clips waiting, so one key's flood leaves room for the others.

Memory of one job (S = the model's input size, 1024 for every SAM 2.1 checkpoint): 3·S² bytes per
frame of the processed range (on the GPU, or in host memory when offloaded); per object about
``(reach + 1 + prompted frames) × (mem_dim·(S/16)²·2 + (S/4)²·4)`` bytes of state, 12.8 MiB for
hiera models at S = 1024, and 1 MiB per job (:func:`state_bytes`); plus one frame's activations.

A job ends when its stream has been read to the end, when :meth:`Tracker.cancel` names it, when it
passes ``SAM2_VIDEO_JOB_TIMEOUT_S``, or when nobody has read its stream for :data:`STALL_S`
seconds (BentoML 1.4's client does not close the connection of a stream its caller stops reading,
so a vanished reader can only be noticed by silence). Ending it frees its frames and state, and its
stream ends with a record that says why (a :class:`Failure`): a reader never has to guess whether
more is coming.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_video_predictor import SAM2VideoPredictor

from .. import errors, metrics, video
from ..config import Settings
from .device_thread import DeviceThread, Lane
from ..messages import (
    Failure, TrackDecoding, TrackedFrame, TrackEnd, TrackPrompt, TrackQueued, TrackSpec, TrackStarted,
    write_record,
)
from ..timing import StageTimer

# sam2 is installed without its optional CUDA extension (SAM2_BUILD_CUDA=0, scripts/setup.sh); its
# video predictor then skips hole filling, which SAM2VideoPredictor's own masks skip too, and warns.
warnings.filterwarnings("ignore", "cannot import name '_C' from 'sam2'", UserWarning)

log = logging.getLogger(__name__)

# load_video_frames' normalisation (ImageNet's mean and standard deviation, per RGB channel)
FRAME_MEAN = (0.485, 0.456, 0.406)
FRAME_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.0  # video_res_masks > 0.0, as Meta's examples threshold them
STALL_S = 120.0  # a job whose stream nobody has read for this long is abandoned
QUEUE_HEARTBEAT_S = 1.0
DECODE_REPORT_EVERY = 30  # frames between TrackDecoding records
REAPER_INTERVAL_S = 5.0
MAX_WAITING_JOBS = 8  # beyond the one tracking: a waiting job's stream holds a model-service thread
MAX_WAITING_PER_TENANT = 4  # half the waiting room: one key's flood leaves the other half to the rest


class _Closed(Exception):
    """The job was canceled, timed out or abandoned: its stream ends with the reason's record."""

    def failure(self) -> Failure:
        reason = str(self)
        if reason == "canceled":
            return Failure.of(errors.TrackingCanceled("the tracking job was canceled"))
        if reason == "timed out":
            return Failure.of(errors.TrackingTimeout("the tracking job ran past SAM2_VIDEO_JOB_TIMEOUT_S"))
        return Failure.of(errors.ModelUnavailable(f"the tracking job ended ({reason}); retry the task"))


def share_weights(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Make every parameter and buffer of ``target`` the very tensor of ``source`` with the same
    name (both built from one config); a name or shape that differs is an error."""
    parameters = dict(source.named_parameters(remove_duplicate=False))
    buffers = dict(source.named_buffers(remove_duplicate=False))
    for module_name, module in target.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for owned, shared in ((module._parameters, parameters), (module._buffers, buffers)):
            for name, tensor in list(owned.items()):
                if tensor is None:
                    continue
                other = shared.get(prefix + name)
                if other is None or other.shape != tensor.shape:
                    raise ValueError(f"cannot share {prefix}{name}: the two models differ there")
                owned[name] = other


def build_video_model(config: str, image_model: SAM2Base, overrides: tuple[str, ...] = ()) -> SAM2VideoPredictor:
    """Meta's video predictor for ``config`` (``build_sam2_video_predictor``'s settings, and hydra
    ``overrides`` if any), on ``image_model``'s device and holding ``image_model``'s weights, not a
    copy of them."""
    model = build_sam2_video_predictor(config, None, device="cpu", hydra_overrides_extra=list(overrides))
    share_weights(model, image_model)
    return model.to(image_model.device).eval()


def memory_reach(model: SAM2Base) -> int:
    """How many frames back (in processing order) tracking a frame reads other frames' outputs:
    the spatial memories of the last ``num_maskmem - 1`` (every ``stride``-th) and the object
    pointers of the last ``max_obj_ptrs_in_encoder - 1`` (``_prepare_memory_conditioned_features``)."""
    stride = model.memory_temporal_stride_for_eval
    return max(1 + stride * (model.num_maskmem - 2), model.max_obj_ptrs_in_encoder - 1)


def frame_bytes(model: SAM2Base) -> int:
    """Bytes of one stored frame (uint8 at the model's input size)."""
    return 3 * model.image_size**2


def state_bytes_per_object(model: SAM2Base, prompted_frames: int = 1) -> int:
    """An upper bound of one object's tracking state: the outputs kept for ``memory_reach + 1``
    frames and every prompted frame, each a bf16 memory (``mem_dim × (S/16)²``), a float32
    low-resolution mask (``(S/4)²``), its object pointer and score."""
    size = model.image_size
    per_frame = model.mem_dim * (size // 16) ** 2 * 2 + (size // 4) ** 2 * 4 + model.hidden_dim * 4 + 4
    return (memory_reach(model) + 1 + prompted_frames) * per_frame


def state_bytes(model: SAM2Base, objects: int, prompted_frames: int = 1) -> int:
    """An upper bound of a job's tracking state: its objects', and the memories' positional
    encoding that all frames share (float32, ``mem_dim × (S/16)²``)."""
    return objects * state_bytes_per_object(model, prompted_frames) + model.mem_dim * (model.image_size // 16) ** 2 * 4


def plan_offload(setting: str, device: torch.device, frames: int, state: int, budget: int) -> tuple[bool, bool]:
    """``(offload_video_to_cpu, offload_state_to_cpu)`` for a job of ``frames`` + ``state`` bytes."""
    if device.type != "cuda":
        return False, False  # host memory is the only memory there
    if setting != "auto":
        return setting != "none", setting == "frames_and_state"
    if frames + state <= budget:
        return False, False
    return True, state > budget


def processed_range(num_frames: int, start: int, max_frames: int | None, reverse: bool) -> tuple[int, int]:
    """``(first, last)`` frames of ``propagate_in_video(start, max_frames - 1, reverse)``, inclusive,
    in processing order (Meta's ``max_frame_num_to_track`` counts the frames after the first)."""
    track = num_frames if max_frames is None else max_frames - 1
    if reverse:
        return start, max(start - track, 0)
    return start, min(start + track, num_frames - 1)


class FrameStore:
    """The frames SAM 2 reads, as ``inference_state["images"]``: ``store[i]`` is frame ``i`` as the
    ``3×S×S`` float32 tensor ``load_video_frames`` would hold, on the compute device.

    Frames are kept as ``S×S×3`` uint8, resized by the PIL call of Meta's frame loader
    (``Image.resize((S, S))``); a frame read is normalised through a per-channel table of the
    256 values ``((v / 255 in float64, as float32) - mean) / std``, the float32 operations the
    loader applies to the whole clip, so every value is the loader's to the bit.
    """

    def __init__(self, size: int, compute: torch.device) -> None:
        self.size = size
        self.compute = compute
        self._frames: dict[int, torch.Tensor] = {}
        levels = (torch.arange(256, dtype=torch.float64) / 255.0).float()
        mean = torch.tensor(FRAME_MEAN, dtype=torch.float32)[:, None]
        std = torch.tensor(FRAME_STD, dtype=torch.float32)[:, None]
        self._table = ((levels[None, :] - mean) / std).to(compute)  # 3 × 256

    def put(self, index: int, frame: np.ndarray) -> None:
        resized = Image.fromarray(frame).resize((self.size, self.size))
        self._frames[index] = torch.from_numpy(np.asarray(resized).copy())

    def move_to(self, device: torch.device) -> None:
        self._frames = {index: pixels.to(device) for index, pixels in self._frames.items()}

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = self._frames[index].to(self.compute, non_blocking=True)
        codes = pixels.permute(2, 0, 1).reshape(3, -1).long()
        return self._table.gather(1, codes).view(3, self.size, self.size)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return sum(pixels.numel() for pixels in self._frames.values())


def new_inference_state(model: SAM2VideoPredictor, images: FrameStore, num_frames: int, height: int, width: int,
                        offload_video: bool, offload_state: bool) -> dict:
    """``SAM2VideoPredictor.init_state``'s dictionary for frames already loaded (``images``):
    the same keys and values, without reading a file (and without its warm-up encode of frame 0,
    which only fills a cache)."""
    device = model.device
    return {
        "images": images,
        "num_frames": num_frames,
        "offload_video_to_cpu": offload_video,
        "offload_state_to_cpu": offload_state,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


class Session:
    """One clip's tracking: its frames, SAM 2's inference state and the propagation, advanced one
    frame per :meth:`next_frame`. Not thread-safe: the device thread drives it."""

    def __init__(self, model: SAM2VideoPredictor, state: dict, prompts: list[TrackPrompt], objects: int,
                 start: int, max_frames: int | None, reverse: bool, pack: Callable[[torch.Tensor], bytes]) -> None:
        self.model = model
        self.state = state
        self.prompts = prompts
        self.objects = objects
        self.start = start
        self.max_frames = max_frames
        self.reverse = reverse
        self.pack = pack
        self.reach = memory_reach(model)
        self._propagation: Iterator | None = None

    def add_prompts(self) -> None:
        """``add_new_points_or_box`` for each prompt, object by object (object ``i`` is SAM 2's
        object id ``i``), each object's prompts in the order given."""
        for prompt in sorted(self.prompts, key=lambda p: p.object_index):
            points, labels = prompt.prompt.point_arrays()
            self.model.add_new_points_or_box(
                self.state, frame_idx=prompt.frame_index, obj_id=prompt.object_index,
                points=points, labels=labels, box=prompt.prompt.box_array(),
            )

    def next_frame(self) -> TrackedFrame | None:
        """Track the next frame; None after the last."""
        if self._propagation is None:
            self._propagation = self.model.propagate_in_video(
                self.state, start_frame_idx=self.start,
                max_frame_num_to_track=None if self.max_frames is None else self.max_frames - 1,
                reverse=self.reverse,
            )
        try:
            frame_index, object_ids, masks = next(self._propagation)
        except StopIteration:
            return None
        self._forget_behind(frame_index)
        row = {object_id: i for i, object_id in enumerate(object_ids)}
        return TrackedFrame(frame_index=frame_index,
                            masks=[self.pack(masks[row[k], 0] > MASK_THRESHOLD) for k in range(self.objects)])

    def _forget_behind(self, frame_index: int) -> None:
        """Drop the outputs of frames that no later frame of this pass reads (prompted frames'
        outputs live elsewhere and stay)."""
        step = -1 if self.reverse else 1
        oldest_read_next = frame_index + step * (1 - self.reach)
        for outputs in self.state["output_dict_per_obj"].values():
            frames = outputs["non_cond_frame_outputs"]
            for old in [f for f in frames if (f < oldest_read_next if step > 0 else f > oldest_read_next)]:
                del frames[old]

    def nbytes(self) -> int:
        """Bytes of the tensors of the tracking state (per-object outputs, inputs, cached features)."""
        seen: set[int] = set()
        total = 0

        def visit(node) -> None:
            nonlocal total
            if isinstance(node, torch.Tensor):
                key = node.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += node.untyped_storage().nbytes()
            elif isinstance(node, dict):
                for value in node.values():
                    visit(value)
            elif isinstance(node, (list, tuple)):
                for value in node:
                    visit(value)

        for key in ("output_dict_per_obj", "temp_output_dict_per_obj", "point_inputs_per_obj", "constants"):
            visit(self.state[key])
        return total


class _Job:
    """One stream's job. Everything large lives in ``store`` or ``session``, never in the stream
    generator's own variables across a record, so that :meth:`close`, from any thread, frees it
    even while that generator is suspended."""

    def __init__(self, job_id: str, deadline: float, tenant: str | None = None) -> None:
        self.id = job_id
        self.deadline = deadline
        self.tenant = tenant  # whose turn it takes (_Turns)
        self.store: FrameStore | None = None  # while the clip is decoded
        self.session: Session | None = None  # from then on
        self.closed: str | None = None  # why: "canceled", "abandoned", "finished"
        self.busy = False
        self.last_read = time.monotonic()
        self.counted: str | None = None  # its state in the sam2_video_jobs gauge

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.store = self.session = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One unit of work between two records: refused once closed or past the deadline."""
        if self.closed is not None:
            raise _Closed(self.closed)
        if time.monotonic() > self.deadline:
            raise errors.TrackingTimeout("the tracking job ran past SAM2_VIDEO_JOB_TIMEOUT_S")
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            self.last_read = time.monotonic()
        if self.closed is not None:
            raise _Closed(self.closed)


class _Turns:
    """One job tracks at a time; the waiting ones take turns across tenants (API keys). The next to
    track is the oldest waiting job of the tenant served least recently (a tenant with nothing
    tracked or waiting counts as never served), so a tenant with many clips waiting gets every
    other turn at most while anyone else waits, instead of all the turns before them."""

    def __init__(self, max_waiting: int, max_waiting_per_tenant: int) -> None:
        self.max_waiting = max_waiting
        self.max_waiting_per_tenant = max_waiting_per_tenant
        self._current: _Job | None = None
        self._waiting: dict[str | None, list[_Job]] = {}  # per tenant, oldest first
        self._arrival: dict[_Job, int] = {}  # the jobs in line (waiting or tracking): their arrival number
        self._arrivals = itertools.count()
        self._served: dict[str | None, int] = {}  # tenant -> the turn its last job started at
        self._turn = 0
        self._changed = threading.Condition()

    def join(self, job: _Job) -> None:
        """Put ``job`` in line; :class:`errors.ModelUnavailable` (nothing joined) when the waiting
        room or its tenant's share of it is full."""
        with self._changed:
            if self._current is not None:
                waiting = sum(len(jobs) for jobs in self._waiting.values())
                if waiting >= self.max_waiting:  # each waiting job holds one of the service's threads
                    raise errors.ModelUnavailable(
                        f"{waiting + 1} clips are already being tracked or waiting here; retry later")
                mine = len(self._waiting.get(job.tenant, ()))
                if mine >= self.max_waiting_per_tenant:
                    raise errors.ModelUnavailable(
                        f"{mine} clips of this API key are already waiting to be tracked here, its share of the "
                        f"queue (SAM2_VIDEO_MAX_WAITING_PER_KEY); submit this one when one of them has finished")
            self._arrival[job] = next(self._arrivals)
            self._waiting.setdefault(job.tenant, []).append(job)
            self._advance()

    def order(self) -> list[_Job]:
        """The waiting jobs, in the order they will track (under the lock)."""
        waiting = {tenant: list(jobs) for tenant, jobs in self._waiting.items()}
        served, turn, order = dict(self._served), self._turn, []
        while waiting:
            tenant = min(waiting, key=lambda t: (served.get(t, -1), self._arrival[waiting[t][0]]))
            order.append(waiting[tenant].pop(0))
            turn += 1
            served[tenant] = turn
            if not waiting[tenant]:
                del waiting[tenant]
        return order

    def wait(self, job: _Job, timeout: float) -> int:
        """Jobs ahead of ``job`` after waiting up to ``timeout`` s for its turn (0: its turn, or it
        has left the line)."""
        with self._changed:
            self._changed.wait_for(lambda: self._current is job or job.closed is not None, timeout)
            if self._current is job or job not in self._arrival:
                return 0
            return 1 + self.order().index(job)

    def leave(self, job: _Job) -> None:
        with self._changed:
            if self._current is job:
                self._current = None
            elif job in self._arrival:
                self._waiting[job.tenant].remove(job)
                if not self._waiting[job.tenant]:
                    del self._waiting[job.tenant]
            else:
                return
            self._arrival.pop(job, None)
            if job.tenant not in self._waiting and (self._current is None or self._current.tenant != job.tenant):
                self._served.pop(job.tenant, None)  # nothing of theirs left: they count as never served
            self._advance()
            self._changed.notify_all()

    def _advance(self) -> None:
        if self._current is None and self._waiting:
            job = self.order()[0]
            self._waiting[job.tenant].remove(job)
            if not self._waiting[job.tenant]:
                del self._waiting[job.tenant]
            self._current = job
            self._turn += 1
            self._served[job.tenant] = self._turn
            self._changed.notify_all()


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
    device thread and weights; the video predictor is built on first use."""

    def __init__(self, device: DeviceThread, config: str, settings: TrackerSettings) -> None:
        self.device = device
        self.config = config
        self.settings = settings
        self._model: SAM2VideoPredictor | None = None
        self._model_lock = threading.Lock()
        self._turns = _Turns(MAX_WAITING_JOBS, settings.max_waiting_per_tenant)
        self._jobs: dict[str, _Job] = {}
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
        """The records of tracking ``spec`` through the clip ``data`` (see ``protocol.py``)."""
        job = _Job(spec.job_id, time.monotonic() + self.settings.job_timeout_s, spec.tenant)
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
        except _Closed as closed:
            log.info("tracking job %s ended: %s", job.id, closed)
            yield write_record(closed.failure())  # the reader learns at once that nothing more comes
        finally:
            self._end(job, "finished")

    def _run(self, job: _Job, data: bytes, spec: TrackSpec, timer: StageTimer) -> Iterator[bytes]:
        model = self.model
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

    def _on_device(self, job: _Job, work: Callable[[Session], object]) -> object:
        session = job.session
        if session is None:  # closed while this waited for the device thread
            raise _Closed(job.closed or "closed")
        with self.device.segmenter.autocast():
            return work(session)

    def _end(self, job: _Job, reason: str) -> None:
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
    def _count(job: _Job, state: str | None) -> None:
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
        try:
            prompt.prompt.check_fits(width, height)
        except errors.InvalidPrompt as exc:
            raise errors.InvalidPrompt(f"objects[{prompt.object_index}] on frame {prompt.frame_index}: {exc}") from None
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


def build_tracker(settings: Settings, device: DeviceThread, config: str) -> Tracker:
    return Tracker(device, config, TrackerSettings(
        limits=settings.video_limits, offload=settings.sam2_video_offload, gpu_bytes=settings.sam2_video_gpu_bytes,
        job_timeout_s=settings.sam2_video_job_timeout_s,
        max_waiting_per_tenant=settings.sam2_video_max_waiting_per_key,
    ))
