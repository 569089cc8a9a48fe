"""What crosses between the API service and the model service (``service.py``).

The API service (CPU: HTTP, image codecs, PNG, S3) calls the model service (the device: embedding
cache, encoder, decoder) with a cache key, the prompts and, only when the model service does not
hold that key's embedding, the decoded image. Locally the two are processes on one machine
talking over a Unix socket; deployed, separate deployments scaled on their own. BentoML pickles
these values between them (protocol 5), so bytes cross without any text encoding.

Cache keys: ``id:<image_id>`` or ``sha256:<hex>`` of the image, prefixed with ``<tenant>/`` when
API keys are on (:func:`scoped_key`); image ids and hashes hold no ``/``.
"""

from __future__ import annotations

import math
import pickle
import re
import struct
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from . import errors
from .errors import InvalidField
from .prompts import Prompt


class RawImage(BaseModel):
    """An upright ``H × W`` RGB image as ``(H, W, 3)`` uint8 pixels (the decoded upload, EXIF
    orientation applied). Pickle protocol 5 carries an array's memory out of band: no copy is made
    to send it, and the receiving side reads it where the request body landed (read-only)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pixels: Annotated[np.ndarray, WithJsonSchema({"type": "string", "format": "binary"})]

    @field_validator("pixels")
    @classmethod
    def _rgb(cls, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
            raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
        return pixels

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def scoped_key(tenant: str | None, image_key: str) -> str:
    """The cache key of ``image_key`` for the caller ``tenant`` (None: API keys are off)."""
    return f"{tenant}/{image_key}" if tenant else image_key


# A scoped_key: an optional tenant (guard.tenant_id: 16 hex digits), then an image_id or a SHA-256.
CACHE_KEY = re.compile(r"(?:[0-9a-f]{16}/)?(?:id:[A-Za-z0-9._:-]{1,128}|sha256:[0-9a-f]{64})")
MAX_PROMPTS = 32  # prompts (objects) in one call: /segment_objects' limit


def tenant_of(key: str) -> str | None:
    """The tenant a :func:`scoped_key` was made for."""
    tenant, _, _ = key.rpartition("/")
    return tenant or None


@dataclass(frozen=True)
class ImageLimits:
    """``SAM2_MAX_IMAGE_PIXELS`` and ``SAM2_MAX_IMAGE_SIDE``, as the model service re-checks them."""

    max_pixels: int = 50_000_000
    max_side: int = 16384

    def check(self, width: int, height: int) -> None:
        if width * height > self.max_pixels or max(width, height) > self.max_side:
            raise errors.ImageTooLarge(
                f"the image is {width}x{height}; the model service takes at most {self.max_pixels} pixels "
                f"(SAM2_MAX_IMAGE_PIXELS) and {self.max_side} on either side (SAM2_MAX_IMAGE_SIDE)")


MASK_INPUT_SIDE = 256  # SAM 2's mask_input: 4× its 64×64 image embedding, for every model size


class LowResMask(BaseModel):
    """A mask sent as a file (``mask_input``), in SAM 2's low-resolution mask frame: the image
    stretched to ``256 × 256`` cells, ``coverage`` holding per cell (row-major, one byte each) the
    fraction of it that the mask covers × 255 (:mod:`sam2_api.maskinput`)."""

    coverage: bytes = Field(min_length=MASK_INPUT_SIDE**2, max_length=MASK_INPUT_SIDE**2)


class MaskBits(BaseModel):
    """One mask at the image's size: ``np.packbits`` of its row-major ``(H, W)`` pixels (True =
    object), SAM 2's predicted IoU of it, and the ``mask_id`` naming its low-resolution logits in
    the model service (:mod:`sam2_api.model.logit_cache`). When its prompt asked for ``candidates``,
    ``others`` holds SAM 2's other masks for that prompt, by descending score."""

    bits: bytes
    score: float
    mask_id: str = ""
    others: list["MaskBits"] = []


class Failure(BaseModel):
    """A :class:`sam2_api.errors.RequestError` raised in the model service, to be raised again in
    the API service with the same class and message."""

    kind: str
    message: str

    @classmethod
    def of(cls, exc: errors.RequestError) -> "Failure":
        return cls(kind=type(exc).__name__, message=str(exc))

    def error(self) -> errors.RequestError:
        return errors.by_name(self.kind)(self.message)


class ModelReply(BaseModel):
    """The model service's answer: the best mask of each prompt, in the order of the prompts, or ``needs_image`` when the
    key's embedding is not cached and no image came with the call, or a request error."""

    needs_image: bool = False
    masks: list[MaskBits] = []
    width: int = 0
    height: int = 0
    cached: bool = False  # the encoder was skipped
    seconds: dict[str, float] = {}  # the stages the model service timed, for Server-Timing
    failure: Failure | None = None


# --- Video tracking -------------------------------------------------------------------------------
# The API service sends the clip's bytes and a TrackSpec; the model service answers with a stream
# of records (write_record), one per event: its place in the queue, decoding progress, the clip as
# decoded (TrackStarted), then one TrackedFrame per processed frame with each object's mask bits,
# and TrackEnd (or a Failure). BentoML streams bytes in chunks of its own size; RecordReader cuts
# them back into records.


class TrackPrompt(BaseModel):
    """One prompt for one object on one frame: ``points``/``labels``/``box`` in pixels of that
    upright frame (as for images; ``multimask_output`` does not apply)."""

    object_index: int = Field(ge=0)
    frame_index: int = Field(ge=0)
    prompt: Prompt


class TrackSpec(BaseModel):
    """What to track: ``objects`` objects, each with at least one prompt; from ``start_frame_index``
    (default: the first prompted frame, or the last when ``reverse``) for at most ``max_frames``
    frames (default: to the clip's end, or its start). ``tenant``: the API key's tenant id that
    submitted it (None when API keys are off), so that the tracker's queue takes turns across keys."""

    job_id: str
    tenant: str | None = None
    model: str | None = None  # the model size's id (sam2_api.sizes); None: the default
    objects: int = Field(ge=1)
    prompts: list[TrackPrompt]
    start_frame_index: int | None = Field(None, ge=0)
    max_frames: int | None = Field(None, ge=1)
    reverse: bool = False

    @model_validator(mode="after")
    def _every_object_prompted_once_per_frame(self) -> "TrackSpec":
        seen = {(p.object_index, p.frame_index) for p in self.prompts}
        if len(seen) != len(self.prompts) or {o for o, _ in seen} != set(range(self.objects)):
            raise ValueError("every object needs prompts, at most one per frame")
        return self

    def check_fits(self, width: int, height: int) -> None:
        """:class:`errors.InvalidPrompt`, naming the object and frame, for the first prompt off an upright
        ``width × height`` frame: the one check of both services, each where it learns the frame's size."""
        for p in self.prompts:
            try:
                p.prompt.check_fits(width, height)
            except errors.InvalidPrompt as exc:
                raise errors.InvalidPrompt(f"objects[{p.object_index}] on frame {p.frame_index}: {exc}") from None


class TrackQueued(BaseModel):
    """The job waits for the tracker: ``position`` jobs are ahead of it (sent about once a second)."""

    position: int


class TrackDecoding(BaseModel):
    frames_decoded: int


class TrackStarted(BaseModel):
    """The clip as decoded: ``clip_frames`` frames of ``width × height`` (upright); frames
    ``first_frame`` to ``last_frame`` (inclusive, in processing order) are tracked."""

    clip_frames: int
    width: int
    height: int
    fps: float
    first_frame: int
    last_frame: int
    offload_video: bool
    offload_state: bool

    @property
    def frames(self) -> int:
        return abs(self.last_frame - self.first_frame) + 1


class TrackedFrame(BaseModel):
    """One processed frame: per object, in order, its mask's bits (:class:`MaskBits`' layout, at the
    frame's upright size)."""

    frame_index: int
    masks: list[bytes]


class TrackEnd(BaseModel):
    seconds: dict[str, float] = {}  # the model service's stages, summed over the job


TrackRecord = TrackQueued | TrackDecoding | TrackStarted | TrackedFrame | TrackEnd | Failure
_LENGTH = struct.Struct("<Q")


def write_record(record: TrackRecord) -> bytes:
    """One record as its pickled length-prefixed bytes (pickle, as BentoML itself sends values)."""
    body = pickle.dumps(record, protocol=5)
    return _LENGTH.pack(len(body)) + body


class RecordReader:
    """Cuts a stream of byte chunks back into the records :func:`write_record` wrote."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[TrackRecord]:
        self._buffer += chunk
        records = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            records.append(pickle.loads(self._buffer[_LENGTH.size:end]))
            del self._buffer[:end]
        return records

    @property
    def pending(self) -> int:
        """Bytes of a record not yet complete."""
        return len(self._buffer)


# ---- segment everything ----------------------------------------------------------------------
# Its parameters, their bounds, and what crosses between the two services.
#
# The parameters are those of Meta's ``SAM2AutomaticMaskGenerator``, with its names and defaults, read
# from request fields by :mod:`sam2_api.api.fields.everything` (one message in words per malformed field), handed to the model service
# as :class:`EverythingParams`. Which combinations an image can take is decided by :meth:`EverythingParams.plan`,
# once the image's size is known (on the model service, for cached images too):
#
# - points: ``points_per_side`` ≤ 64; in every crop layer at least 1 and at most as many points per
#   side as the layer's crops have pixels on their shorter side; at most ``max_points`` in all layers
#   together (each point is one decoder prompt);
# - memory: one batch of points costs, per point, the decoder's activations
#   (:data:`DECODER_BYTES_PER_POINT`) and its candidate masks as full-size float logits with their
#   copies (:data:`BYTES_PER_MASK_PIXEL` per pixel of the whole image, the largest crop, per mask);
#   ``points_per_batch`` times that stays under ``max_batch_bytes``. ``points_per_batch`` left out is
#   Meta's 64 on a GPU (4 on a CPU), lowered to fit; given explicitly and too large, it is a 400 with the largest that fits.
#

MAX_POINTS_PER_SIDE = 64
# The grid when a request leaves points_per_side out: Meta's 32 on a GPU. On a CPU its 1,024 decoder
# prompts take minutes (0.15-0.4 s each on 2 shared cores: docs/PERFORMANCE-everything.md) and run past
# the 60 s deadline (a 503 after ~53 s); so does 12 × 12 on a busy 2-core machine (128 of 144 points in
# 49 s, with an 8 s encoder pass), while 8 × 8 (64 prompts) leaves room for the 25 % margin there.
GPU_POINTS_PER_SIDE = 32
CPU_POINTS_PER_SIDE = 8


def default_points_per_side(device_type: str) -> int:
    """The grid a request without ``points_per_side`` gets on a device of ``device_type`` ("cuda", "cpu")."""
    return GPU_POINTS_PER_SIDE if device_type == "cuda" else CPU_POINTS_PER_SIDE


# Points per decoder call when a request leaves points_per_batch out: Meta's 64 on a GPU. On a CPU a
# batch runs whole between the device's checkpoints, so every other caller's click waits for it (a
# flood's 16 points of a 256x192 image: one batch of 2.5 s, or four of at most 0.35 s), and small
# batches are faster there too: 64 points of a 1024x1024 noise image spent 15.9 s in batches of 64,
# 8.0 s in batches of 4, longest 0.6 s (upsampling and filtering many full-size candidate masks at
# once costs more memory traffic than it saves). scripts/measure_points_per_batch.py measures it.
GPU_POINTS_PER_BATCH = 64
CPU_POINTS_PER_BATCH = 4


def default_points_per_batch(device_type: str) -> int:
    """The batch a request without ``points_per_batch`` gets on a device of ``device_type``, before the memory bound."""
    return GPU_POINTS_PER_BATCH if device_type == "cuda" else CPU_POINTS_PER_BATCH

MAX_CROP_LAYERS = 2
MAX_OBJECTS = 1024  # the label map is 16-bit; this keeps replies and uploads bounded
DEFAULT_MAX_OBJECTS = 256
# The peak memory of one batch of Meta's generator, per point: the mask decoder's activations (the
# image embedding and high-resolution features repeated per point: 28 MiB measured, whatever the
# image size), or, per candidate mask, its float32 logits at full size, the copy each filter step
# makes of the kept ones, and the boolean maps of the stability score and the RLE encoding (7-12
# bytes a pixel measured). Upper bounds of the measured peaks (CPU, hiera-tiny, noisy random-weight
# masks, the RLE's worst case; the mask decoder is the same for every SAM 2 size), the two added
# although they do not coincide; tests/unit/test_everything.py measures one batch against them.
DECODER_BYTES_PER_POINT = 32 * 1024**2
BYTES_PER_MASK_PIXEL = 12


class EverythingParams(BaseModel):
    """``SAM2AutomaticMaskGenerator``'s parameters (its names and defaults), checked for type and range.

    ``points_per_batch`` is None when the request left it out: :meth:`plan` picks its device's
    default (Meta's 64 on a GPU), or fewer when that would not fit the memory bound for the image. ``points_per_side`` is None when the
    request left it out: the model service fills in its device's default (:meth:`with_default_grid`).
    """

    points_per_side: int | None = None
    points_per_batch: int | None = None
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    use_m2m: bool = False
    multimask_output: bool = True
    max_objects: int = DEFAULT_MAX_OBJECTS

    def with_default_grid(self, device_type: str) -> "EverythingParams":
        """These parameters with ``points_per_side`` filled in, if left out, for a device of ``device_type``."""
        if self.points_per_side is not None:
            return self
        return self.model_copy(update={"points_per_side": default_points_per_side(device_type)})

    @property
    def grid(self) -> int:
        """Points per side: as asked, else Meta's default (the model service fills in its device's first)."""
        return GPU_POINTS_PER_SIDE if self.points_per_side is None else self.points_per_side

    @property
    def needs_pixels(self) -> bool:
        """Crops are encoded from the image's pixels; without crops the cached embedding suffices."""
        return self.crop_n_layers > 0

    def generator_kwargs(self, points_per_batch: int) -> dict[str, Any]:
        """The keyword arguments of ``SAM2AutomaticMaskGenerator`` for these parameters."""
        kwargs = self.model_dump(exclude={"max_objects", "points_per_batch"})
        return {**kwargs, "points_per_side": self.grid, "points_per_batch": points_per_batch}

    def plan(self, width: int, height: int, limits: "EverythingLimits",
             default_batch: int = GPU_POINTS_PER_BATCH) -> "Plan":
        """The work for a ``width × height`` image, or :class:`InvalidField` naming the limit it exceeds;
        ``default_batch``: the points per batch if the request left it out (:func:`default_points_per_batch`)."""
        layers = []
        for layer in range(self.crop_n_layers + 1):
            per_side = int(self.grid / self.crop_n_points_downscale_factor**layer)  # as Meta's grids
            crops, crop_w, crop_h = _crop_layer(width, height, layer, self.crop_overlap_ratio)
            if per_side < 1:
                raise InvalidField(
                    f"crop layer {layer} would get no points: points_per_side {self.grid} / "
                    f"crop_n_points_downscale_factor {self.crop_n_points_downscale_factor}^{layer} < 1; lower "
                    "crop_n_layers or crop_n_points_downscale_factor"
                )
            if per_side > min(crop_w, crop_h):
                where = "the image" if layer == 0 else f"the crops of layer {layer}"
                raise InvalidField(
                    f"{per_side} points per side do not fit {where} ({crop_w}x{crop_h} pixels): at most "
                    f"{min(crop_w, crop_h)} for this {width}x{height} image; lower points_per_side"
                    + (" or crop_n_layers" if layer else "")
                )
            layers.append((crops, per_side * per_side))
        points = sum(crops * per_crop for crops, per_crop in layers)
        if points > limits.max_points:
            shown = " + ".join(f"{crops}×{per_crop}" for crops, per_crop in layers)
            raise InvalidField(
                f"points_per_side {self.grid} with crop_n_layers {self.crop_n_layers} means {points} "
                f"decoder points ({shown}); the limit is {limits.max_points} (SAM2_EVERYTHING_MAX_POINTS): lower "
                "points_per_side or crop_n_layers, or raise crop_n_points_downscale_factor"
            )
        per_point = DECODER_BYTES_PER_POINT + BYTES_PER_MASK_PIXEL * width * height * (3 if self.multimask_output else 1)
        fits = limits.max_batch_bytes // per_point
        if fits < 1:
            raise InvalidField(
                f"a {width}x{height} image is too large for segment everything: one point takes "
                f"{_gib(per_point)} GiB, over the {_gib(limits.max_batch_bytes)} GiB bound "
                "(SAM2_EVERYTHING_MAX_BATCH_BYTES); send a smaller image"
            )
        batch = self.points_per_batch
        if batch is None:
            batch = min(default_batch, fits)
        elif batch > fits:
            raise InvalidField(
                f"points_per_batch {batch} needs about {_gib(batch * per_point)} GiB for a {width}x{height} image; "
                f"the bound is {_gib(limits.max_batch_bytes)} GiB (SAM2_EVERYTHING_MAX_BATCH_BYTES): use "
                f"points_per_batch ≤ {fits}, or leave it out"
            )
        crops = sum(crops for crops, _ in layers[1:])
        return Plan(points=points, points_per_batch=batch, batch_bytes=batch * per_point, crops=crops)


def _crop_layer(width: int, height: int, layer: int, overlap_ratio: float) -> tuple[int, int, int]:
    """Crops in ``layer`` and the size of the largest (``sam2.utils.amg.generate_crop_boxes``)."""
    if layer == 0:
        return 1, width, height
    per_side = 2**layer
    overlap = int(overlap_ratio * min(width, height) * (2 / per_side))
    crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
    crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
    return per_side * per_side, min(crop_w, width), min(crop_h, height)


def _gib(size: int) -> str:
    return f"{size / 1024**3:.2f}"


@dataclass(frozen=True)
class EverythingLimits:
    """The service's bounds on one request (``Settings``: SAM2_EVERYTHING_*)."""

    deadline_s: float = 60.0
    max_points: int = 16384
    max_batch_bytes: int = 8 * 1024**3


@dataclass(frozen=True)
class Plan:
    points: int  # decoder prompts over all crops
    points_per_batch: int
    batch_bytes: int  # the estimated peak of one batch
    crops: int = 0  # encoder passes besides the whole image's, one per crop

    @property
    def bytes_per_point(self) -> float:
        return self.batch_bytes / self.points_per_batch


class EverythingObject(BaseModel):
    """One object of ``SAM2AutomaticMaskGenerator``'s output.

    ``counts``: the mask as COCO's compressed RLE string (pycocotools; column-major runs over the
    ``height × width`` image, starting with background), which is what Meta's ``coco_rle`` output
    mode gives; ``point_coords``: ``[[x, y]]``, the grid point that prompted it, in pixels of the
    upright image.
    """

    counts: str
    area: int
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]]


class EverythingReply(BaseModel):
    """The model service's answer: the objects, largest first (at most ``max_objects``), or
    ``needs_image`` (the embedding is not cached, or crops need the pixels), or a request error."""

    needs_image: bool = False
    objects: list[EverythingObject] = []
    found: int = 0  # objects the generator kept, before ``max_objects``
    width: int = 0
    height: int = 0
    cached: bool = False  # the whole image's encoder pass was skipped
    seconds: dict[str, float] = {}
    failure: Failure | None = None
