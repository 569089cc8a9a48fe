"""The HTTP contract of ``POST /segment``: request fields and the response, with their docs.

These annotations become BentoML's input validation and the OpenAPI page at ``/``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .prompts import MAX_POINTS, Box, Label, Point

ImageField = Field(
    description="The image file (JPEG, PNG, WebP, BMP, TIFF or GIF; first frame only). "
    "EXIF orientation is applied before anything else, so coordinates refer to the upright image."
)
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


class SegmentResponse(BaseModel):
    """Where the mask went, how sure the model is, and the size the mask has."""

    mask_url: str | None = Field(
        description="URL of the PNG mask (single-channel 8-bit, 0 = background, 255 = object, "
        "width × height pixels); null when S3 is not configured or the upload failed."
    )
    score: float = Field(description="SAM 2's predicted IoU of the returned mask, 0–1.")
    width: int = Field(description="Width of the upright image and of the mask, in pixels.")
    height: int = Field(description="Height of the upright image and of the mask, in pixels.")
