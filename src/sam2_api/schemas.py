"""The HTTP contract of the API: request fields and responses, with their docs.

The request fields are documented with the JSON schema of what they must hold (that is what the
OpenAPI page and generated clients show) but accepted as sent and validated by our own code
(:class:`sam2_api.prompts.Prompt`, :func:`parse_objects`, :func:`parse_image_id`), so that a
malformed field gets one message in words, the same on every route, instead of pydantic's report.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, WithJsonSchema

from .errors import InvalidField, InvalidPrompt
from .prompts import MAX_POINTS, Box, Label, Point, Prompt

MAX_OBJECTS = 32
IMAGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _documented(shape: Any, description: str, **extra: Any) -> Any:
    """A field accepted as sent, documented as ``shape`` (a type, or a JSON schema without refs)."""
    schema = shape if isinstance(shape, dict) else TypeAdapter(shape).json_schema()
    return Annotated[Any, WithJsonSchema(schema), Field(description=description, **extra)]


ImageField = Field(
    description="The image file (JPEG, PNG, WebP, BMP, TIFF or GIF; first frame only). "
    "EXIF orientation is applied before anything else, so coordinates refer to the upright image. "
    "Leave it out when you send `image_url`, or `image_id` alone for an image sent before.",
    # Optional: absent means None. A factory rather than `= None`, which pydantic would try (and
    # warn that it fails) to write into the JSON schema through BentoML's file serializer.
    default_factory=lambda: None,
)
ImageIdField = _documented(
    str,
    "Your name for this image's content (1-128 of A-Z a-z 0-9 . _ : -). Send it with the image once; "
    "later requests may send the id alone and skip the upload and the encoder while the server still "
    "caches it (404 otherwise). Reuse an id only for the same image. Without it, repeat uploads of "
    "identical bytes are recognised by content hash.",
    examples=["photo-42"],
)
ImageUrlField = _documented(
    str,
    "The image by reference instead of upload: s3://bucket/key (read with the service's credentials, "
    "from the buckets in S3_INPUT_BUCKETS only; others get 403) or https://… (public addresses only; at "
    "most SAM2_MAX_UPLOAD_BYTES, 10 s). Send either this or `image`.",
    examples=["s3://my-photos/cats/chelsea.png"],
)
PointsField = _documented(
    list[Point],
    f"Clicks as [[x, y], ...] in pixels of the upright image (x right, y down, origin top-left); at most "
    f"{MAX_POINTS}.",
    examples=[[[256, 200]]],
)
LabelsField = _documented(
    list[Label], "One label per point: 1 = object, 0 = background. Default: all 1.", examples=[[1]],
)
BoxField = _documented(
    Box, "A box [x1, y1, x2, y2] in pixels of the upright image, x2 > x1, y2 > y1.", examples=[[100, 80, 400, 420]],
)
MultimaskField = _documented(
    bool,
    "Ask SAM 2 for three candidates and return the best-scoring one. Default: true for a single point "
    "without a box, false otherwise.",
)
ObjectsField = _documented(
    {"type": "array", "items": Prompt.model_json_schema(), "minItems": 1, "maxItems": MAX_OBJECTS},
    f"One prompt per object (1 to {MAX_OBJECTS}), each with the fields of /segment: points, labels, box, "
    "multimask_output.",
    examples=[[{"box": [10, 20, 200, 220]}, {"points": [[300, 150]], "labels": [1]}]],
)


def parse_image_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not IMAGE_ID.fullmatch(value):
        raise InvalidField(f"`image_id` must be 1-128 characters of A-Z a-z 0-9 . _ : -; got {_shown(value)}")
    return value


def parse_image_url(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidField(f"`image_url` must be a string: s3://bucket/key or https://host/path; got {_shown(value)}")


def parse_objects(value: Any) -> list[Prompt]:
    """``objects``: 1 to MAX_OBJECTS prompts, each checked as /segment checks its fields."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_OBJECTS:
        raise InvalidPrompt(
            f"`objects` must be a list of 1 to {MAX_OBJECTS} prompts, e.g. "
            f'[{{"box": [10, 20, 200, 220]}}, {{"points": [[300, 150]]}}]; got {_shown(value)}'
        )
    prompts = []
    for index, fields in enumerate(value):
        if not isinstance(fields, dict):
            raise InvalidPrompt(f"objects[{index}] must be an object with the fields of /segment; got {_shown(fields)}")
        try:
            prompts.append(Prompt.parse(**fields))
        except InvalidPrompt as exc:
            raise InvalidPrompt(f"objects[{index}]: {exc}") from None
    return prompts


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SegmentResponse(BaseModel):
    """Where the mask went, how sure the model is, and the size the mask has."""

    mask_url: str | None = Field(
        description="URL of the PNG mask (single-channel 8-bit, 0 = background, 255 = object, "
        "width × height pixels); null when S3 is not configured or the upload failed."
    )
    score: float = Field(description="SAM 2's predicted IoU of the returned mask, 0–1.")
    width: int = Field(description="Width of the upright image and of the mask, in pixels.")
    height: int = Field(description="Height of the upright image and of the mask, in pixels.")


class ObjectMask(BaseModel):
    mask_url: str | None = Field(description="URL of this object's PNG mask, or null (as in /segment).")
    score: float = Field(description="SAM 2's predicted IoU of this mask, 0–1.")


class ObjectsResponse(BaseModel):
    """One mask per object, in the order of `objects`."""

    objects: list[ObjectMask]
    width: int = Field(description="Width of the upright image and of every mask, in pixels.")
    height: int = Field(description="Height of the upright image and of every mask, in pixels.")

