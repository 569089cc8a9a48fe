"""Segment everything: its parameters, their bounds, and what crosses between the two services.

The parameters are those of Meta's ``SAM2AutomaticMaskGenerator``, with its names and defaults, read
from request fields here (one message in words per malformed field) and handed to the model service
as :class:`EverythingParams`. Which combinations an image can take is decided by :meth:`EverythingParams.plan`,
once the image's size is known (on the model service, for cached images too):

- points: ``points_per_side`` ≤ 64; in every crop layer at least 1 and at most as many points per
  side as the layer's crops have pixels on their shorter side; at most ``max_points`` in all layers
  together (each point is one decoder prompt);
- memory: one batch of points costs, per point, the decoder's activations
  (:data:`DECODER_BYTES_PER_POINT`) and its candidate masks as full-size float logits with their
  copies (:data:`BYTES_PER_MASK_PIXEL` per pixel of the whole image, the largest crop, per mask);
  ``points_per_batch`` times that stays under ``max_batch_bytes``. ``points_per_batch`` left out is
  Meta's 64 on a GPU (4 on a CPU), lowered to fit; given explicitly and too large, it is a 400 with the largest that fits.

Nothing here imports torch: the API service reads these fields too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .errors import InvalidField
from .protocol import Failure

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
FORMATS = ("rle", "polygons")
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
            raise InvalidField(f"`{name}` ({what}) must be {shape} from {low:g} to {high:g}; got {_shown(value)}")
        values[name] = number
    for name in _FLAGS:
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise InvalidField(f"`{name}` must be true or false; got {_shown(value)}")
        values[name] = value
    return EverythingParams(**values)


def _number(value: Any, kind: type) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class OutputOptions:
    """What the API service makes of each object besides its box and area."""

    formats: tuple[str, ...] = ()
    polygon_tolerance: float = 0.0
    per_object_masks: bool = True


def parse_output(formats: Any = None, polygon_tolerance: Any = None, per_object_masks: Any = None) -> OutputOptions:
    """``formats`` and ``polygon_tolerance`` as /segment takes them; ``per_object_masks``: true or false."""
    from .schemas import parse_formats, parse_polygon_tolerance  # the one parser of both, for /segment too

    chosen = parse_formats(formats)
    tolerance = parse_polygon_tolerance(polygon_tolerance)
    if per_object_masks is not None and not isinstance(per_object_masks, bool):
        raise InvalidField(f"`per_object_masks` must be true or false; got {_shown(per_object_masks)}")
    return OutputOptions(tuple(f for f in FORMATS if f in chosen), tolerance, per_object_masks is not False)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
