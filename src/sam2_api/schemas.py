"""The HTTP contract of ``POST /segment``: request fields and the response, with their docs.

These annotations become BentoML's input validation and the OpenAPI page at ``/``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .pipeline import Result
from .prompts import MAX_POINTS, Box, Label, Point, Prompt

MAX_OBJECTS = 32

ImageField = Field(
    description="The image file (JPEG, PNG, WebP, BMP, TIFF or GIF; first frame only). "
    "EXIF orientation is applied before anything else, so coordinates refer to the upright image. "
    "May be left out when `image_id` names an image sent before."
)
ImageIdField = Annotated[
    str | None,
    Field(
        description="Your name for this image's content (1-128 of A-Z a-z 0-9 . _ : -). Send it with "
        "the image once; later requests may send the id alone and skip the upload and the encoder "
        "while the server still caches it (404 otherwise). Reuse an id only for the same image. "
        "Without it, repeat uploads of identical bytes are recognised by content hash.",
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        examples=["photo-42"],
    ),
]
PointsField = Annotated[
    list[Point] | None,
    Field(
        description=f"Clicks as [[x, y], ...] in pixels of the upright image (x right, y down, "
        f"origin top-left); at most {MAX_POINTS}.",
        max_length=MAX_POINTS,
        examples=[[[256, 200]]],
    ),
]
LabelsField = Annotated[
    list[Label] | None,
    Field(description="One label per point: 1 = object, 0 = background. Default: all 1.", examples=[[1]]),
]
BoxField = Annotated[
    Box | None,
    Field(description="A box [x1, y1, x2, y2] in pixels of the upright image, x2 > x1, y2 > y1.",
          examples=[[100, 80, 400, 420]]),
]
MultimaskField = Annotated[
    bool | None,
    Field(description="Ask SAM 2 for three candidates and return the best-scoring one. "
          "Default: true for a single point without a box, false otherwise."),
]


ImageUrlField = Annotated[
    str | None,
    Field(
        description="The image by reference instead of upload: s3://bucket/key (read with the "
        "service's credentials, from the buckets in S3_INPUT_BUCKETS only; others get 403) or "
        "https://… (public addresses only; at most SAM2_MAX_UPLOAD_BYTES, 10 s). Send either "
        "this or `image`.",
        examples=["s3://my-photos/cats/chelsea.png"],
    ),
]
ObjectsField = Annotated[
    list[Prompt],
    Field(
        description=f"One prompt per object (1 to {MAX_OBJECTS}), each with the fields of "
        "/segment: points, labels, box, multimask_output.",
        min_length=1, max_length=MAX_OBJECTS,
        examples=[[{"box": [10, 20, 200, 220]}, {"points": [[300, 150]], "labels": [1]}]],
    ),
]


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

    @classmethod
    def from_result(cls, result: Result) -> "ObjectsResponse":
        return cls(
            objects=[ObjectMask(mask_url=m.url, score=m.score) for m in result.masks],
            width=result.width, height=result.height,
        )
