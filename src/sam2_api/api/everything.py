"""Segment everything on the API service: image → model service → label map, PNGs → S3 URLs.

The image is resolved as for /segment (:meth:`Pipeline.ask`: same cache keys, so the routes share
embeddings). The model service answers with each object's mask as a COCO RLE string; here each is
decoded once to paint the label map and to describe it (box, area, and the asked-for formats), and
again, in the upload threads, for its PNG. All PNGs (the label map first) go to S3 through one
:meth:`MaskStore.put_many`, in parallel within its one deadline. At most one decoded mask per
thread is alive at a time, whatever the number of objects.

One deadline (``SAM2_EVERYTHING_DEADLINE_S``) covers the whole request: the model service gets
what is left of it, and the work here (formats, PNGs) is checked against it too, mask by mask: past
it, a 503 that says what to reduce. The formats are bounded as on the other routes
(:class:`sam2_api.maskformats.FormatBudget`), before any PNG is made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .. import imaging, maskformats
from ..errors import DeadlineExceeded, InvalidField
from ..messages import EverythingLimits, EverythingObject, EverythingParams
from .labelmap import LabelMap, paint_order
from .segment import SMALLER_FORMATS, ImageRequest, Pipeline, sized
from .storage import PngsNotMade, Upload
from ..timing import StageTimer


@dataclass(frozen=True)
class OutputOptions:
    """What the API service makes of each object besides its box and area."""

    formats: tuple[str, ...] = ()
    polygon_tolerance: float = 0.0
    per_object_masks: bool = True


# Why an object has no mask_url when the request set per_object_masks to false (beside storage.UPLOAD_ERRORS).
NOT_REQUESTED = "not requested"


@dataclass(frozen=True)
class FoundObject:
    mask: Upload  # its PNG's URL, or why there is none
    described: dict  # maskformats.describe: bbox, area (and rle, polygons when asked for)
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]]


@dataclass(frozen=True)
class EverythingResult:
    objects: list[FoundObject]  # largest first
    label_map: Upload
    width: int
    height: int
    cached: bool  # the whole image's encoder pass was skipped
    found: int  # objects found before max_objects


def segment_everything(pipeline: Pipeline, image: ImageRequest, params: EverythingParams, output: OutputOptions,
                       timer: StageTimer, tenant: str | None = None,
                       deadline_s: float = EverythingLimits.deadline_s, model: str | None = None) -> EverythingResult:
    """Every object in the image; ``tenant`` (the caller's API key id) scopes the cache; the whole
    request within ``deadline_s`` seconds of this call; ``model``: the served size's id, None for the default."""
    if params.needs_pixels and image.upload is None and image.url is None:
        raise InvalidField("crop_n_layers > 0 encodes crops from the image's pixels: send `image` or `image_url` "
                           "(an `image_id` alone serves only crop_n_layers 0)")
    until = time.monotonic() + deadline_s
    reply = pipeline.ask(
        image, lambda key, pixels: pipeline.model.everything(key=key, params=params, image=pixels,
                                                             deadline_s=until - time.monotonic(), **sized(model)),
        timer, tenant, send_image=params.needs_pixels,
    )
    height, width, objects = reply.height, reply.width, reply.objects

    def late(done: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"segment everything would not finish within its {deadline_s:g} s deadline (SAM2_EVERYTHING_DEADLINE_S): "
            f"the model found {len(objects)} objects, and {done} when it passed; lower max_objects "
            f"({params.max_objects}), ask for fewer formats, set per_object_masks to false, or send a smaller image")

    described: list[dict | None] = [None] * len(objects)
    labels = LabelMap(height, width)
    budget = maskformats.FormatBudget(pipeline.max_response_bytes, len(objects),
                                      f"{SMALLER_FORMATS}, or lower max_objects ({params.max_objects})")
    with timer.stage("objects"):
        for done, index in enumerate(paint_order([o.predicted_iou for o in objects])):
            if time.monotonic() > until:
                raise late(f"{done} of their masks were described")
            mask = maskformats.from_coco_rle(objects[index].counts, height, width)
            labels.paint(index, mask)
            described[index] = maskformats.describe(mask, output.formats, output.polygon_tolerance, budget)

    def label_map_png() -> bytes:
        with timer.stage("png"):
            return labels.png()

    def mask_png(found: EverythingObject) -> Callable[[], bytes]:
        def make() -> bytes:
            with timer.stage("png"):
                mask = maskformats.from_coco_rle(found.counts, height, width)
                return imaging.mask_png(imaging.pack_mask(mask), height, width)
        return make

    pngs = [label_map_png] + ([mask_png(o) for o in objects] if output.per_object_masks else [])
    with timer.stage("store"):
        try:
            label_map, *masks = pipeline.store.put_many(pngs, bulk=True, until=until)
        except PngsNotMade as cut:
            raise late(f"{cut.made} of {cut.total} PNGs were made") from None
    if not output.per_object_masks:
        masks = [Upload(None, NOT_REQUESTED)] * len(objects)
    found = [
        FoundObject(mask, description, o.predicted_iou, o.stability_score, o.point_coords)
        for mask, description, o in zip(masks, described, objects)
    ]
    return EverythingResult(found, label_map, width, height, reply.cached, reply.found)
