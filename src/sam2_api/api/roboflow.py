"""Roboflow's SAM 2 routes (``roboflow/inference``), so that its ``inference-sdk`` works unchanged.

What Roboflow's server takes (``inference/core/entities/requests/sam2.py``) and its SDK sends
(``InferenceHTTPClient.sam2_segment_image``: a JSON body, the image as ``{"type": "base64",
"value": ...}``, the key as the body's ``api_key``, ``?api_key=`` or ``Authorization: Bearer``):

- ``POST /sam2/embed_image`` ``{"image", "image_id"?, "sam2_version_id"?}`` → ``{"image_id", "time"}``;
- ``POST /sam2/segment_image`` ``{"image", "image_id"?, "prompts", "multimask_output" (default
  true: the best of SAM 2's three masks), "format": "json" | "rle", "save_logits_to_cache",
  "load_logits_from_cache", "sam2_version_id"?}`` → ``{"predictions": [{"masks", "confidence",
  "format"}], "time"}``, one prediction per prompt. ``prompts`` is ``{"prompts": [...]}``, a flat
  list, or one prompt; each prompt a ``box`` ``{"x", "y", "width", "height"}`` whose x, y are its
  **centre** and/or ``points`` ``[{"x", "y", "positive"}]``, in pixels.

Here each prompt is /segment's (box corners x ± width/2, y ± height/2; a point's ``positive`` its
label), run through the same pipeline (guards, cache, tenancy, limits). The image's ``image_id``
names its embedding in our cache; without one it is the SHA-256 of the image's bytes, and
``embed_image`` answers it so that the next call may send the id alone. A ``url`` image is read
as /segment's ``image_url`` (the same checks). ``json`` masks are our polygons' rings (every
exterior and hole, pixel-corner vertices: the pixels whose centres lie in an odd number of them); ``rle``
COCO's compressed RLE, as /segment's ``rle``. Each prediction also has ``mask_url`` (and
``mask_error`` when it was not stored) when S3 is configured. docs/ROBOFLOW.md lists what is not
supported (``binary``, ``mask_input``, no prompt at all) and why.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, Field

from ..errors import InvalidField, InvalidImage, InvalidPrompt, MaskIdOfAnotherImage, UnknownMaskId
from ..prompts import MAX_POINTS, Prompt
from .cvat import body_limit, decode_image  # noqa: F401 (body_limit: the same JSON bound as CVAT's)
from .fields.common import parse_flag, shown
from .fields.segment import MAX_OBJECTS, _documented, parse_image_id
from .image_urls import ImageSources
from .roboflow_logits import LogitsIndex, PromptKey
from .segment import ImageRequest, Pipeline, Result, sized

EMBED_ROUTE = "/sam2/embed_image"
SEGMENT_ROUTE = "/sam2/segment_image"
ROUTES = (EMBED_ROUTE, SEGMENT_ROUTE)
# The most values a body may hold, counted before it is parsed (RequestGuard's max_json_items): the
# most prompts with the most points each, {x, y, positive} and a box, is about 8,500; the body may be an
# image's base64 in size, which must not be millions of parsed numbers instead.
MAX_JSON_ITEMS = 16384
FORMATS = {"json": ("polygons", "polygon"), "rle": ("rle", "rle")}  # Roboflow's format: ours, and its name
VERSION_IDS = ("hiera_tiny", "hiera_small", "hiera_b_plus", "hiera_large")


def model_of_version(value: Any, model_for: Callable[..., str]) -> str:
    """The served size Roboflow's ``sam2_version_id`` names (``hiera_tiny`` … ``hiera_large``, or any
    other spelling ``model`` takes): the default size when it is left out, 400 naming the served
    ones otherwise (``Settings.model_for``)."""
    return model_for(value, field="sam2_version_id")


ImageField = _documented(
    {"type": "object", "properties": {"type": {"enum": ["base64", "url"]}, "value": {"type": "string"}},
     "required": ["type", "value"]},
    "The image: {\"type\": \"base64\", \"value\": <the encoded file in base64>} (at most SAM2_MAX_UPLOAD_BYTES "
    "decoded) or {\"type\": \"url\", \"value\": \"https://...\" | \"s3://...\"} (read as /segment's image_url). "
    "May be left out when `image_id` names an image sent before.",
)
ImageIdField = _documented(str, "The image's name in the embedding cache (1-128 of A-Z a-z 0-9 . _ : -); "
                           "without it, the SHA-256 of the image's bytes.", examples=["photo-42"])
VersionField = _documented({"enum": list(VERSION_IDS)}, "Roboflow's SAM 2 size, as `model` on our routes: one "
                           "of the sizes this service serves (SAM2_MODELS; a 400 names them); left out, the "
                           "default size.")
ApiKeyField = _documented(str, "Your API key, when the service has keys (or send `?api_key=`, or "
                          "`Authorization: Bearer <key>`).")
PromptsField = _documented(
    {"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
    f"{{\"prompts\": [...]}}, a flat list of prompts, or one prompt (1 to {MAX_OBJECTS}); each a `box` "
    "{\"x\", \"y\", \"width\", \"height\"} (x, y: the box's centre) and/or `points` [{\"x\", \"y\", \"positive\"}], "
    f"at most {MAX_POINTS} points, in pixels of the upright image.",
    examples=[{"prompts": [{"points": [{"x": 200, "y": 150, "positive": True}]}]}],
)
MultimaskField = _documented(bool, "true (default): the best of SAM 2's three masks; false: its single mask.")
FormatField = _documented({"enum": list(FORMATS)}, "json (default): polygons; rle: COCO compressed RLE.")
SaveLogitsField = _documented(bool, "Remember each prompt's logits for a later `load_logits_from_cache`.")
LoadLogitsField = _documented(bool, "Refine the masks of an earlier request on this image whose prompts this "
                              "request's extend (Roboflow's rule), if its logits are still cached.")
MaskInputField = _documented(Any, "Not supported here (400): send the clicks with `load_logits_from_cache`.")


class EmbedResponse(BaseModel):
    """Roboflow's ``Sam2EmbeddingResponse``."""

    image_id: str = Field(description="The id to send alone to /sam2/segment_image while the embedding is cached.")
    time: float = Field(description="Seconds this service took.")


class Prediction(BaseModel):
    """Roboflow's ``Sam2SegmentationPrediction``, plus ``mask_url``."""

    masks: list[list[list[int]]] | dict = Field(
        description="`json`: rings of [x, y] pixel corners (exteriors and holes: fill them even-odd); "
        "`rle`: COCO compressed RLE {\"size\": [h, w], \"counts\"}.")
    confidence: float = Field(description="SAM 2's predicted IoU of the mask.")
    format: str = Field(description="polygon or rle.")
    mask_url: str | None = Field(None, description="The PNG mask in S3, when S3 is configured.")
    mask_error: str | None = Field(None, description="Why `mask_url` is null, when it is.")


class SegmentResponse(BaseModel):
    """Roboflow's ``Sam2SegmentationResponse``: one prediction per prompt, in order."""

    predictions: list[Prediction]
    time: float = Field(description="Seconds this service took.")


@dataclass(frozen=True)
class RoboflowImage:
    """The request's image: bytes or a URL (or neither, with an ``image_id``), and its cache name."""

    request: ImageRequest
    image_id: str


@dataclass(frozen=True)
class SegmentRequest:
    image: RoboflowImage
    prompts: list[Prompt]
    keys: list[PromptKey]  # the prompts as sent, for the logits cache
    format: str
    save_logits: bool
    load_logits: bool


def parse_image(image: Any, image_id: Any, max_upload_bytes: int, sources: ImageSources) -> RoboflowImage:
    """``image`` and ``image_id`` as our image request. A URL is checked at once (as ``image_url``),
    and read now only when no ``image_id`` is given, which is then the hash of its bytes."""
    image_id = parse_image_id(image_id)
    if image is None:
        if image_id is None:
            raise InvalidImage("send the image as `image` ({\"type\": \"base64\", \"value\": ...}), or the "
                               "`image_id` of an image sent before")
        return RoboflowImage(ImageRequest(image_id=image_id), image_id)
    if not (isinstance(image, dict) and isinstance(image.get("value"), str)):
        raise InvalidImage(f"`image` must be {{\"type\": \"base64\" | \"url\", \"value\": <string>}}; got {shown(image)}")
    kind, value = image.get("type", "base64"), image["value"]
    if kind == "base64":
        data = decode_image(value, max_upload_bytes)
    elif kind == "url":
        if image_id is not None:
            sources.locate(value, "image.value")  # its errors name this field; the pipeline reads it if needed
            return RoboflowImage(ImageRequest(url=value, image_id=image_id), image_id)
        data = sources.fetch(value, "image.value")
    else:
        raise InvalidImage(f"`image.type` {shown(kind)} is not supported here: send \"base64\" or \"url\"")
    image_id = image_id or hashlib.sha256(data).hexdigest()
    return RoboflowImage(ImageRequest(upload=data, image_id=image_id), image_id)


def parse_prompts(value: Any, multimask_output: bool) -> tuple[list[Prompt], list[PromptKey]]:
    """Roboflow's ``prompts`` (nested, flat or single) as /segment's prompts, and as the logits cache
    compares them."""
    if isinstance(value, dict) and "prompts" in value:
        value = value["prompts"]
    elif isinstance(value, dict):
        value = [value]
    if not value:
        raise InvalidPrompt("send at least one prompt in `prompts`: {\"prompts\": [{\"points\": [{\"x\": 200, "
                            "\"y\": 150, \"positive\": true}]}]} (a box or points each; segmenting with no prompt "
                            "at all is not supported here)")
    if not isinstance(value, list):
        raise InvalidPrompt(f"`prompts` must be {{\"prompts\": [...]}}, a list of prompts or one prompt; got {shown(value)}")
    if len(value) > MAX_OBJECTS:
        raise InvalidPrompt(f"`prompts` holds {len(value)} prompts; the limit is {MAX_OBJECTS}")
    parsed = [_prompt(item, index, multimask_output) for index, item in enumerate(value)]
    return [prompt for prompt, _ in parsed], [key for _, key in parsed]


def _prompt(item: Any, index: int, multimask_output: bool) -> tuple[Prompt, PromptKey]:
    where = f"prompt {index}"
    if not isinstance(item, dict):
        raise InvalidPrompt(f"{where} must be an object with `box` and/or `points`; got {shown(item)}")
    box, points = item.get("box"), item.get("points")
    if box is None and not points:
        raise InvalidPrompt(f"{where} has neither `box` nor `points`: give at least one")
    corners = centre = None
    if box is not None:
        centre = tuple(_number(box.get(k) if isinstance(box, dict) else None, f"{where}: `box.{k}`")
                       for k in ("x", "y", "width", "height"))
        x, y, width, height = centre
        if width <= 0 or height <= 0:
            raise InvalidPrompt(f"{where}: `box` must have a width and height above 0; got {width} x {height}")
        corners = [x - width / 2, y - height / 2, x + width / 2, y + height / 2]
    clicks: list[tuple[float, float, bool]] = []
    if points is not None:
        if not isinstance(points, list):
            raise InvalidPrompt(f"{where}: `points` must be a list of {{\"x\", \"y\", \"positive\"}}; got {shown(points)}")
        if len(points) > MAX_POINTS:
            raise InvalidPrompt(f"{where} has {len(points)} points; the limit is {MAX_POINTS}")
        for n, point in enumerate(points):
            if not isinstance(point, dict):
                raise InvalidPrompt(f"{where}: point {n} must be {{\"x\", \"y\", \"positive\"}}; got {shown(point)}")
            positive = point.get("positive")
            if positive not in (True, False):  # 1 and 0 too, as pydantic takes them
                raise InvalidPrompt(f"{where}: point {n} needs `positive`: true (object) or false (background)")
            clicks.append((_number(point.get("x"), f"{where}: point {n} `x`"),
                           _number(point.get("y"), f"{where}: point {n} `y`"), bool(positive)))
    prompt = Prompt.parse(points=[[x, y] for x, y, _ in clicks] or None,
                          labels=[int(p) for _, _, p in clicks] or None, box=corners, multimask_output=multimask_output)
    return prompt, PromptKey(centre, frozenset(clicks))


def _number(value: Any, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise InvalidPrompt(f"{what} must be a number of pixels; got {shown(value)}")


def parse_segment(image: RoboflowImage, prompts: Any, multimask_output: Any, format: Any,
                  save_logits: Any, load_logits: Any, mask_input: Any) -> SegmentRequest:
    if mask_input is not None:
        raise InvalidField("`mask_input` is not supported here: send the earlier clicks again with "
                           "`load_logits_from_cache` (and `save_logits_to_cache` on the earlier request)")
    format = "json" if format is None else format
    if format not in FORMATS:
        hint = (" (`binary`, Roboflow's npz of full-size float logits, is not served: the model service "
                "sends masks as bits)" if format == "binary" else "")
        raise InvalidField(f"`format` must be one of {', '.join(FORMATS)}; got {shown(format)}{hint}")
    parsed, keys = parse_prompts(prompts, parse_flag(multimask_output, "multimask_output", True))
    return SegmentRequest(image, parsed, keys, format, bool(parse_flag(save_logits, "save_logits_to_cache", False)),
                          bool(parse_flag(load_logits, "load_logits_from_cache", False)))


class RoboflowRoutes:
    """The two routes over the pipeline, with the logits index."""

    def __init__(self, pipeline: Pipeline, logits: LogitsIndex, store_configured: bool) -> None:
        self.pipeline = pipeline
        self.logits = logits
        self.store_configured = store_configured

    def embed(self, image: RoboflowImage, timer, tenant: str | None, model: str | None = None,
              ) -> tuple[EmbedResponse, bool]:
        """The image's embedding cached (no decoder run); Roboflow's answer and whether it was cached."""
        started = time.perf_counter()
        reply = self.pipeline.ask(image.request, lambda key, pixels: self.pipeline.model.predict(
            key=key, prompts=[], image=pixels, **sized(model)), timer, tenant)
        return EmbedResponse(image_id=image.image_id, time=time.perf_counter() - started), reply.cached

    def segment(self, request: SegmentRequest, timer, tenant: str | None, model: str | None = None,
                ) -> tuple[bytes, bool]:
        """Roboflow's answer (JSON bytes) and whether the embedding was cached."""
        started = time.perf_counter()
        image = f"{tenant or ''}|{request.image.image_id}|{model or ''}"  # a mask_id refines only its own size
        prompts = request.prompts
        if request.load_logits:
            ids = self.logits.find(image, request.keys)
            prompts = [p if i is None else p.model_copy(update={"previous_mask_id": i}) for p, i in zip(prompts, ids)]
        formats = (FORMATS[request.format][0],)
        try:
            result = self.pipeline.run(request.image.request, prompts, timer, tenant, None, formats, model=model)
        except (UnknownMaskId, MaskIdOfAnotherImage):  # evicted since: segment as if nothing were cached
            result = self.pipeline.run(request.image.request, request.prompts, timer, tenant, None, formats,
                                       model=model)
        if request.save_logits:
            self.logits.save(image, request.keys, [mask.mask_id for mask in result.masks])
        body = response(result, request.format, self.store_configured, time.perf_counter() - started)
        return json.dumps(body, separators=(",", ":")).encode(), result.cached


def response(result: Result, format: str, store_configured: bool, seconds: float) -> dict:
    """``{"predictions": [...], "time"}`` as Roboflow's ``Sam2SegmentationResponse``, plus ``mask_url``."""
    ours, name = FORMATS[format]
    predictions = []
    for mask in result.masks:
        if ours == "rle":
            masks: Any = mask.details["rle"]
        else:  # every ring, holes included: even-odd filling gives back the mask
            masks = [ring for part in mask.details["polygons"] for ring in [part["exterior"], *part["holes"]]]
        prediction = {"masks": masks, "confidence": mask.score, "format": name}
        if store_configured:
            prediction["mask_url"] = mask.url
            if mask.url_error:
                prediction["mask_error"] = mask.url_error
        predictions.append(prediction)
    return {"predictions": predictions, "time": seconds}
