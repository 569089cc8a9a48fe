"""The HTTP contract of the API: request fields and responses, with their docs.

The request fields are documented with the JSON schema of what they must hold (that is what the
OpenAPI page and generated clients show) but accepted as sent and validated by our own code
(:class:`sam2_api.prompts.Prompt`, :func:`parse_objects`, :func:`parse_image_id`,
:func:`sam2_api.api.fields.common.parse_formats`), so that a malformed field gets one message in
words, the same on every route, instead of pydantic's report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, WithJsonSchema

from .. import storage
from ...errors import InvalidField, InvalidPrompt
from ...maskformats import FORMATS
from ...prompts import MAX_POINTS, Box, Label, Point, Prompt
from .common import shown

MAX_OBJECTS = 32
MAX_STEPS = 32
CANDIDATE_COUNT = 3  # SAM 2's multimask output: the masks a step's `chosen` picks from
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
PreviousMaskIdField = _documented(
    str,
    "Refine an earlier answer: the `mask_id` it returned. Its low-resolution logits become SAM 2's "
    "`mask_input`, as in SAM's own interactive loop: send every click so far, plus this id. Works with "
    "the same image (the same `image_id`, or the same bytes) and API key only; the server keeps these for a "
    "while (404 once evicted: send the clicks again without it).",
    examples=["m_2Qh3m0kS8b1tW9xYzAbCdE"],
)
CandidatesField = _documented(
    bool,
    "Return all three of SAM 2's candidate masks under `candidates`, best first, each with its URL, score "
    "and `mask_id` (the top-level fields stay those of the best). Turns `multimask_output` on.",
)
MaskInputField = Field(
    description="A mask to start from, as a file (PNG; any size: it is stretched to the image): single-channel, "
    "0 = background, anything else = object. It becomes SAM 2's `mask_input` (README: how). Not with "
    "`previous_mask_id`.",
    default_factory=lambda: None,  # optional, as ImageField
)
FormatsField = _documented(
    list[Literal[FORMATS]],
    'Also return each mask as "rle" (COCO RLE: {"size": [h, w], "counts": str}, as pycocotools writes it) '
    'and/or "polygons" (each part of the mask with its holes, in pixels of the upright image). `bbox` and '
    "`area` always come back.",
    examples=[["rle", "polygons"]],
)
PolygonToleranceField = _documented(
    {"type": "number", "minimum": 0},
    "How far, in pixels, simplified polygons may stray from the mask's boundary (Douglas-Peucker). "
    "Default 0: every corner of the pixel boundary.",
    examples=[1.5],
)
ObjectsField = _documented(
    {"type": "array", "items": Prompt.model_json_schema(), "minItems": 1, "maxItems": MAX_OBJECTS},
    f"One prompt per object (1 to {MAX_OBJECTS}), each with the fields of /segment: points, labels, box, "
    "multimask_output, previous_mask_id, candidates.",
    examples=[[{"box": [10, 20, 200, 220]}, {"points": [[300, 150]], "labels": [1]}]],
)

StepsField = _documented(
    {"type": "array", "maxItems": MAX_STEPS, "items": {
        "type": "object", "additionalProperties": False,
        "properties": {**Prompt.model_json_schema()["properties"],
                       "chosen": {"type": "integer", "minimum": 0, "maximum": CANDIDATE_COUNT - 1, "default": 0}}}},
    f"A refined mask's earlier clicks, oldest first (at most {MAX_STEPS}), run in this one request instead of "
    "one request each: every step has /segment's prompt fields (points, labels, box, multimask_output, "
    "candidates) and `chosen`, which of that step's masks the next step refines (an index into its "
    "`candidates`, best first; default 0, the best; above 0 only with `candidates`). Each step refines the "
    "chosen mask of the one before, the first its own `previous_mask_id` if it has one, and this request's "
    "prompt refines the last: the answer is exactly that of the separate requests' chain, and only it is "
    "stored. Not with a top-level `previous_mask_id` or `mask_input`.",
    examples=[[{"points": [[256, 200]], "candidates": True, "chosen": 1}]],
)


@dataclass(frozen=True)
class Step:
    """An earlier click of the mask being refined: its prompt, and which of its masks the next refines."""

    prompt: Prompt
    chosen: int = 0


def parse_steps(value: Any, prompt: Prompt, with_mask_input: bool) -> list[Step]:
    """``steps``: up to MAX_STEPS earlier prompts of the chain that ``prompt`` ends, oldest first;
    only the first may name a ``previous_mask_id`` (the others refine the step before)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_STEPS:
        raise InvalidPrompt(f"`steps` must be a list of at most {MAX_STEPS} earlier prompts, oldest first, e.g. "
                            f'[{{"points": [[300, 150]], "candidates": true, "chosen": 1}}]; got {shown(value)}')
    if value and prompt.previous_mask_id is not None:
        raise InvalidPrompt("send `previous_mask_id` on the first of `steps`, not beside them: the request's own "
                            "prompt refines the last step's mask")
    if value and with_mask_input:
        raise InvalidPrompt("`mask_input` does not go with `steps`: the request's prompt refines the last step's mask")
    steps = []
    for index, fields in enumerate(value):
        if not isinstance(fields, dict):
            raise InvalidPrompt(f"steps[{index}] must be an object with /segment's prompt fields and `chosen`; "
                                f"got {shown(fields)}")
        unknown = sorted(set(fields) - set(Prompt.model_fields) - {"chosen"})
        if unknown:
            raise InvalidPrompt(f"steps[{index}]: unknown field {shown(unknown[0])}: a step has points, labels, box, "
                                "multimask_output, candidates, chosen (and previous_mask_id on the first)")
        if index > 0 and fields.get("previous_mask_id") is not None:
            raise InvalidPrompt(f"steps[{index}]: only the first step may have a `previous_mask_id`: each later "
                                "step refines the chosen mask of the one before")
        fields = dict(fields)
        chosen = fields.pop("chosen", 0)
        try:
            step = Prompt.parse(**fields)
        except InvalidPrompt as exc:
            raise InvalidPrompt(f"steps[{index}]: {exc}") from None
        count = CANDIDATE_COUNT if step.candidates else 1
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < count:
            raise InvalidPrompt(f"steps[{index}]: `chosen` must be " + (
                f"0 to {count - 1}, an index into the step's candidates, best first" if step.candidates
                else "0 (the step's best mask) unless the step has `candidates`: true") + f"; got {shown(chosen)}")
        steps.append(Step(step, chosen))
    return steps


def parse_image_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not IMAGE_ID.fullmatch(value):
        raise InvalidField(f"`image_id` must be 1-128 characters of A-Z a-z 0-9 . _ : -; got {shown(value)}")
    return value


def parse_image_url(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidField(f"`image_url` must be a string: s3://bucket/key or https://host/path; got {shown(value)}")


def parse_polygon_tolerance(value: Any) -> float:
    """``polygon_tolerance``: pixels, a finite number ≥ 0; 0 by default (exact boundaries)."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    raise InvalidField(f"`polygon_tolerance` must be a number of pixels ≥ 0, e.g. 1.5; got {shown(value)}")


def parse_objects(value: Any) -> list[Prompt]:
    """``objects``: 1 to MAX_OBJECTS prompts, each checked as /segment checks its fields."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_OBJECTS:
        raise InvalidPrompt(
            f"`objects` must be a list of 1 to {MAX_OBJECTS} prompts, e.g. "
            f'[{{"box": [10, 20, 200, 220]}}, {{"points": [[300, 150]]}}]; got {shown(value)}'
        )
    prompts = []
    for index, fields in enumerate(value):
        if not isinstance(fields, dict):
            raise InvalidPrompt(f"objects[{index}] must be an object with the fields of /segment; got {shown(fields)}")
        try:
            prompts.append(Prompt.parse(**fields))
        except InvalidPrompt as exc:
            raise InvalidPrompt(f"objects[{index}]: {exc}") from None
    return prompts


def _unless_asked(description: str) -> Any:
    """A field left out of the response unless the request asked for it (or, for an error, unless there was one)."""
    return Field(None, description=description, exclude_if=lambda value: value is None)


# Why a URL is null: for programs to branch on; the server's log has the details (never in the response).
UploadError = Literal[storage.NOT_CONFIGURED, storage.UNREACHABLE, storage.FAILED, storage.LATE]
MASK_ERROR = (
    "Only when `mask_url` is null: why the mask was not stored. \"s3 not configured\" (no bucket or no "
    "credentials on the server), \"s3 unreachable\" (no connection or no answer in time), \"upload failed\" (S3 "
    "refused it: permissions, bucket), \"upload deadline passed\" (not stored within S3_UPLOAD_DEADLINE)."
)


class Mask(BaseModel):
    """One mask: where its PNG went, how sure the model is, how to refine it, and what it covers.

    Frames: pixels of the upright image, x to the right and y down from its top-left corner.
    """

    mask_url: str | None = Field(
        description="URL of the PNG mask (single-channel 8-bit, 0 = background, 255 = object, "
        "width × height pixels); null when it was not stored, and then `mask_error` says why."
    )
    mask_error: UploadError | None = _unless_asked(MASK_ERROR)
    score: float = Field(description="SAM 2's predicted IoU of this mask, 0–1.")
    mask_id: str = Field(
        description="Names this mask's low-resolution logits on the server: send it as `previous_mask_id` "
        "with the next click to refine this mask."
    )
    bbox: list[int] = Field(
        description="[x1, y1, x2, y2]: the mask's pixels lie in x1 ≤ x < x2, y1 ≤ y < y2; [0, 0, 0, 0] "
        "when it is empty."
    )
    area: int = Field(description="The mask's pixel count.")
    rle: dict | None = _unless_asked(
        'With formats ["rle"]: COCO RLE as pycocotools writes it, {"size": [height, width], "counts": str} '
        "(column-major runs: pycocotools.mask.decode reads it)."
    )
    polygons: list[dict] | None = _unless_asked(
        'With formats ["polygons"]: each part of the mask, largest first, as {"exterior": [[x, y], ...], '
        '"holes": [[[x, y], ...], ...]}; vertices are pixel corners (pixel (x, y) covers [x, x+1) x [y, y+1)), '
        "each part a valid Polygon: the pixels whose centres lie inside an odd number of rings are the mask's."
    )


class Candidate(Mask):
    """One of SAM 2's candidate masks for a prompt."""


class SegmentResponse(Mask):
    """The best mask (where it went, how sure the model is, how to refine it, what it covers) and
    the size it has; with `candidates`, all three."""

    width: int = Field(description="Width of the upright image and of the mask, in pixels.")
    height: int = Field(description="Height of the upright image and of the mask, in pixels.")
    candidates: list[Candidate] | None = _unless_asked(
        "With `candidates`: SAM 2's three masks, best first (the first is the one above)."
    )


class ObjectMask(Mask):
    """This object's best mask, as in /segment."""

    candidates: list[Candidate] | None = _unless_asked(
        "With this object's `candidates`: SAM 2's three masks, best first (the first is the one above)."
    )


class ObjectsResponse(BaseModel):
    """One mask per object, in the order of `objects`."""

    objects: list[ObjectMask]
    width: int = Field(description="Width of the upright image and of every mask, in pixels.")
    height: int = Field(description="Height of the upright image and of every mask, in pixels.")
