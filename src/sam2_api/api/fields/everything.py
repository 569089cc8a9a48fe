"""The HTTP contract of POST /segment_everything: its fields and its response, with their docs.

As for the other routes, the fields are documented with the JSON schema of what they must hold and
validated by our own code (:func:`parse_params`, :func:`parse_output` below), so
that a malformed field gets one message in words.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from ..everything import NOT_REQUESTED, EverythingResult, OutputOptions
from ...errors import InvalidField
from ...messages import (
    CPU_POINTS_PER_BATCH, CPU_POINTS_PER_SIDE, DEFAULT_MAX_OBJECTS, GPU_POINTS_PER_BATCH, GPU_POINTS_PER_SIDE,
    MAX_CROP_LAYERS, MAX_OBJECTS, MAX_POINTS_PER_SIDE, EverythingParams,
)
from ...maskformats import FORMATS
from .common import parse_flag, parse_formats, shown
from .segment import MASK_ERROR, UploadError, _documented, _unless_asked, parse_polygon_tolerance

ObjectMaskError = Literal[UploadError, NOT_REQUESTED]

_META = "As in Meta's SAM2AutomaticMaskGenerator, whose default it keeps."


class EverythingFields:
    """The route's fields besides the image (``image``, ``image_url``, ``image_id`` as for /segment)."""

    points_per_side = _documented(
        int, f"Points sampled along each side of the image (a grid of n×n prompts), 1 to {MAX_POINTS_PER_SIDE}; "
        f"default {GPU_POINTS_PER_SIDE} (Meta's) on a GPU, {CPU_POINTS_PER_SIDE} on a CPU, where Meta's would run "
        "past the deadline.", examples=[32])
    points_per_batch = _documented(
        int, f"Points run through the decoder at once. Default {GPU_POINTS_PER_BATCH} (Meta's) on a GPU, "
        f"{CPU_POINTS_PER_BATCH} on a CPU (faster there, and other callers' requests run between batches), "
        "lowered to fit the memory bound (SAM2_EVERYTHING_MAX_BATCH_BYTES) for large images; given explicitly "
        "and too large: 400.")
    pred_iou_thresh = _documented(
        float, f"Keep masks whose predicted IoU is above this, 0 to 1; default 0.8. {_META}")
    stability_score_thresh = _documented(
        float, f"Keep masks whose stability score is at least this, 0 to 1; default 0.95. {_META}")
    stability_score_offset = _documented(
        float, f"Logit offset of the stability score, 0 to 32; default 1.0. {_META}")
    box_nms_thresh = _documented(
        float, f"Box IoU above which duplicate masks are dropped, 0 to 1; default 0.7. {_META}")
    crop_n_layers = _documented(
        int, f"Run again on crops: layer i has (2^i)² crops; 0 to {MAX_CROP_LAYERS}, default 0. Needs the "
        "image's pixels (send `image` or `image_url`); the whole image's embedding still comes from the cache.")
    crop_nms_thresh = _documented(
        float, f"Box IoU above which duplicates across crops are dropped, 0 to 1; default 0.7. {_META}")
    crop_overlap_ratio = _documented(
        float, f"How much crops overlap, as a fraction of the image's shorter side, 0 to 0.99; default 512/1500. {_META}")
    crop_n_points_downscale_factor = _documented(
        int, f"Crop layer i gets points_per_side / factor^i points per side, 1 to 16; default 1. {_META}")
    min_mask_region_area = _documented(
        int, "Fill holes and remove islands up to this many pixels of the 256×256 low-resolution masks; default 0. "
        "Needs sam2's compiled CUDA extension (400 on a server without it).")
    use_m2m = _documented(
        bool, f"One refinement step of each mask with its own low-resolution mask as input; default false. {_META}")
    multimask_output = _documented(
        bool, f"Three candidate masks per point (true, the default) or one. {_META}")
    max_objects = _documented(
        int, f"Return at most this many objects, the largest; 1 to {MAX_OBJECTS}, default {DEFAULT_MAX_OBJECTS}.")
    formats = _documented(
        list[str], 'Also return each mask as "rle" (COCO compressed RLE, pycocotools) and/or "polygons" '
        "(each part's exterior ring and its holes, [x, y] pixel corners).", examples=[["rle"]])
    polygon_tolerance = _documented(
        float, "Simplify polygons by at most this many pixels (Douglas-Peucker); default 0 = every corner.")
    per_object_masks = _documented(
        bool, "Store a PNG per object (true, the default) or only the label map (false: mask_url is null).")


class CocoRle(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO's compressed RLE string (column-major runs, background first).")


class Polygon(BaseModel):
    exterior: list[list[int]]
    holes: list[list[list[int]]]


class FoundObjectResponse(BaseModel):
    # The optional formats are left out of the JSON when not asked for (not sent as null).
    model_config = ConfigDict(json_schema_mode_override="validation")

    mask_url: str | None = Field(description="URL of this object's PNG mask (as in /segment); null when not stored, "
                                 "and then `mask_error` says why.")
    mask_error: ObjectMaskError | None = Field(None, description=f'{MASK_ERROR} "not requested": per_object_masks '
                                               "was false.")
    bbox: list[int] = Field(description="[x1, y1, x2, y2] in pixels of the upright image: the mask's pixels "
                            "x1 ≤ x < x2, y1 ≤ y < y2 (x2, y2 exclusive).")
    area: int = Field(description="The mask's pixel count.")
    predicted_iou: float = Field(description="SAM 2's predicted IoU of this mask.")
    stability_score: float = Field(description="IoU of the mask thresholded at ±stability_score_offset.")
    point_coords: list[list[float]] = Field(description="[[x, y]]: the grid point that prompted this mask, in pixels.")
    rle: CocoRle | None = Field(None, description='With formats ["rle"].')
    polygons: list[Polygon] | None = Field(None, description='With formats ["polygons"].')

    @model_serializer(mode="wrap")
    def _without_unasked_formats(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {name: value for name, value in data.items() if value is not None or name == "mask_url"}


class EverythingResponse(BaseModel):
    """Every object found, largest first, and the label map."""

    objects: list[FoundObjectResponse]
    label_map_url: str | None = Field(
        description="URL of a 16-bit grayscale PNG at the image's size: 0 = no object, i = the i-th object of "
        "`objects` (1-based); where objects overlap, the higher predicted_iou wins. Null when not stored, and then "
        "`label_map_error` says why."
    )
    label_map_error: UploadError | None = _unless_asked(MASK_ERROR.replace("`mask_url`", "`label_map_url`"))
    width: int = Field(description="Width of the upright image, of the label map and of every mask, in pixels.")
    height: int = Field(description="Height of the upright image, of the label map and of every mask, in pixels.")

    @classmethod
    def of(cls, result: EverythingResult) -> "EverythingResponse":
        objects = [
            FoundObjectResponse(mask_url=o.mask.url, mask_error=o.mask.error, predicted_iou=o.predicted_iou,
                                stability_score=o.stability_score, point_coords=o.point_coords, **o.described)
            for o in result.objects
        ]
        return cls(objects=objects, label_map_url=result.label_map.url, label_map_error=result.label_map.error,
                   width=result.width, height=result.height)


# ---- reading the request's fields ---------------------------------------------------------------

# name: (type, lowest, highest, what it is); the defaults are EverythingParams'.
_NUMBERS: dict[str, tuple[type, float, float, str]] = {
    "points_per_side": (int, 1, MAX_POINTS_PER_SIDE, "points along each side of the image"),
    "points_per_batch": (int, 1, 4096, "points per decoder call"),
    "pred_iou_thresh": (float, 0.0, 1.0, "the lowest predicted IoU kept"),
    "stability_score_thresh": (float, 0.0, 1.0, "the lowest stability score kept"),
    "stability_score_offset": (float, 0.0, 32.0, "the logit offset of the stability score"),
    "box_nms_thresh": (float, 0.0, 1.0, "the box IoU above which duplicates are dropped"),
    "crop_n_layers": (int, 0, MAX_CROP_LAYERS, "crop layers"),
    "crop_nms_thresh": (float, 0.0, 1.0, "the box IoU above which duplicates across crops are dropped"),
    "crop_overlap_ratio": (float, 0.0, 0.99, "the crops' overlap, as a fraction of the image's shorter side"),
    "crop_n_points_downscale_factor": (int, 1, 16, "how much fewer points per side each crop layer gets"),
    "min_mask_region_area": (int, 0, 65536, "the largest hole or island removed, in low-resolution mask pixels"),
    "max_objects": (int, 1, MAX_OBJECTS, "the most objects returned, largest first"),
}
_FLAGS = ("use_m2m", "multimask_output")


def parse_params(**fields: Any) -> EverythingParams:
    """The generator's parameters from request fields (None = left out: the default)."""
    values: dict[str, Any] = {}
    for name, (kind, low, high, what) in _NUMBERS.items():
        value = fields.get(name)
        if value is None:
            continue
        number = _number(value, kind)
        if number is None or not low <= number <= high:
            shape = "an integer" if kind is int else "a number"
            raise InvalidField(f"`{name}` ({what}) must be {shape} from {low:g} to {high:g}; got {shown(value)}")
        values[name] = number
    for name in _FLAGS:
        if (value := parse_flag(fields.get(name), name)) is not None:
            values[name] = value
    return EverythingParams(**values)


def _number(value: Any, kind: type) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value) if math.isfinite(value) else None


def parse_output(formats: Any = None, polygon_tolerance: Any = None, per_object_masks: Any = None) -> OutputOptions:
    """``formats`` and ``polygon_tolerance`` as /segment takes them; ``per_object_masks``: true or false."""
    chosen = parse_formats(formats, FORMATS)
    tolerance = parse_polygon_tolerance(polygon_tolerance)
    return OutputOptions(chosen, tolerance, parse_flag(per_object_masks, "per_object_masks", default=True))
