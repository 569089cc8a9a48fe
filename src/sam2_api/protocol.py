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

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from . import errors


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


def tenant_of(key: str) -> str | None:
    """The tenant a :func:`scoped_key` was made for."""
    tenant, _, _ = key.rpartition("/")
    return tenant or None


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
