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

import pickle
import re
import struct
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from . import errors
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
    the model service (:mod:`sam2_api.logitcache`). When its prompt asked for ``candidates``,
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
