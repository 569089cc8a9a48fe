"""Label Studio's ML-backend protocol on top of /segment, served under ``/labelstudio``.

What Label Studio sends (HumanSignal/label-studio, ``label_studio/ml/api_connector.py``, ``MLApi``):
every call is JSON (``requests``' ``json=``) to the backend's URL joined with the route, with HTTP
basic auth when the model's settings say "Basic Authentication":

- ``GET health`` (1 s timeout), then ``POST setup`` ``{"project": "<id>.<created_at>", "schema":
  <labelling config XML>, "hostname", "access_token", "extra_params"}`` (3 s timeout), which must
  answer ``{"model_version": ...}``: when a model is added, and before predictions.
- ``POST predict`` ``{"tasks": [<task with "data">], "project", "label_config": <XML>, "params":
  {"login", "password", "context": <context or null>}}``; an interactive click (``MLBackend.
  interactive_annotating``) sends the one task and the smart tools' regions as ``context.result``:
  ``{"type": "keypointlabels", "value": {"x", "y", ...}, "is_positive": true, "original_width",
  "original_height", "to_name", ...}`` or ``{"type": "rectanglelabels", "value": {"x", "y",
  "width", "height"}}``, in percent of the image. The answer is ``{"results": [prediction]}``, of
  which Label Studio shows ``results[0]["result"]``.
- ``POST webhook``: the project's events, to the webhook Label Studio creates for every model
  (without credentials).

The stock SAM 2 backend (HumanSignal/label-studio-ml-backend, ``examples/segment_anything_2_image``)
maps the context to SAM 2's prompt as here (keypoints with ``is_positive`` as labels 1/0, the
rectangle as the box) and answers the best of three masks as ``brushlabels`` in brush RLE. Here the
prompt is /segment's with /segment's defaults (the best of three for a lone click, one mask
otherwise), the percentages become pixels of the upright image as floats (the stock backend cuts
them to whole pixels), and the image goes through the embedding cache: a second click on a task
costs the decoder only. Each mask tag pointing at the clicked image gets a region: ``brushlabels``
(``BrushLabels``/``Brush``: brush RLE) and/or ``bitmasklabels`` (``BitmaskLabels``/``Bitmask``: a
PNG data URL, black on transparent, as Label Studio's editor writes them).
"""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import brush_rle, imaging
from ..config import MAX_RESPONSE_BYTES
from ..errors import InvalidField, InvalidPrompt, ResponseTooLarge
from ..maskformats import from_coco_rle
from ..prompts import MAX_POINTS, Prompt
from ..timing import StageTimer
from .fields.common import shown
from .fields.segment import _documented
from .labelstudio_config import BRUSH_TAGS, Control, LabelConfig, parse_label_config
from .labelstudio_images import TaskImages
from .segment import ImageRequest, Pipeline, Result

PREFIX = "/labelstudio"
PREDICT_ROUTE, SETUP_ROUTE, WEBHOOK_ROUTE = PREFIX + "/predict", PREFIX + "/setup", PREFIX + "/webhook"
HEALTH_PATHS = ("/health", "/")  # under PREFIX, as the stock backend answers both
FORMATS = ("rle",)  # the mask comes back from the pipeline as COCO RLE, pixel-exact and small
# A task with its annotations' brush RLEs, and nothing near SAM2_MAX_UPLOAD_BYTES: parsed, JSON takes up to
# 21 times its bytes in Python objects ("{}," is a 64-byte dict), twice over (the guard, then BentoML).
MAX_BODY_BYTES = 16 * 1024**2
POINT_TYPES = ("keypointlabels", "keypoint")
# /setup's field is called `schema` by Label Studio; BentoML's input model warns that the name shadows
# pydantic's deprecated BaseModel.schema(), which nothing here calls (the field parses as any other).
warnings.filterwarnings("ignore", message='Field name "schema" in "Input" shadows', category=UserWarning)
BOX_TYPES = ("rectanglelabels", "rectangle")


@dataclass(frozen=True)
class Interaction:
    """One click's request, in Label Studio's terms: the task's image and the smart regions, their
    coordinates still in percent of the image."""

    image_url: Any
    image_field: str  # where the URL was, for messages: tasks[0].data.<field>
    image_name: str  # the Image tag's name (the regions' to_name)
    outputs: list[Control]
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # x, y, width, height
    size: tuple[int, int] = (0, 0)  # original_width, original_height as Label Studio saw the image
    label: str | None = None  # the label of the last smart region

    def prompt(self, width: int, height: int) -> Prompt:
        """The regions as /segment's prompt, in pixels of the ``width`` × ``height`` upright image."""
        points = [[x * width / 100, y * height / 100] for x, y in self.points]
        box = None
        if self.box is not None:
            x, y, w, h = self.box
            xs, ys = sorted((x, x + w)), sorted((y, y + h))
            box = [xs[0] * width / 100, ys[0] * height / 100, xs[1] * width / 100, ys[1] * height / 100]
        return Prompt.parse(points=points or None, labels=self.labels or None, box=box)


def parse_predict(tasks: Any, label_config: Any, params: Any) -> Interaction | None:
    """The click in a /predict body; None when it carries none (``params.context`` absent or empty:
    Label Studio asking for pre-annotations, which this backend does not make)."""
    context = params.get("context") if isinstance(params, dict) else None
    if params is not None and not isinstance(params, dict):
        raise InvalidField(f"`params` must be an object; got {shown(params)}")
    if not context:
        return None
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        raise InvalidField(f"`params.context` must be an object with a `result` list; got {shown(context)}")
    regions = [r for r in context["result"] if isinstance(r, dict) and str(r.get("type", "")).lower()
               in POINT_TYPES + BOX_TYPES]
    if not regions:
        return None
    if not isinstance(tasks, list) or len(tasks) != 1 or not isinstance(tasks[0], dict):
        raise InvalidField(f"`tasks` must hold the one task that was clicked; got {shown(tasks)}")
    config = parse_label_config(label_config, "label_config")
    image_name = _image_name(regions, config)
    outputs = config.outputs_for(image_name)
    if not outputs:
        config.check_usable("label_config")  # says what the config lacks
        raise InvalidField(f"`label_config` has no <BrushLabels> or <BitmaskLabels> with toName=\"{image_name}\"")
    data = tasks[0].get("data")
    key = config.images[image_name]
    if not isinstance(data, dict) or key not in data:
        raise InvalidField(f"the task has no `data.{key}`, which <Image name=\"{image_name}\" value=\"${key}\"> shows")
    found = Interaction(data[key], f"tasks[0].data.{key}", image_name, outputs, size=_original_size(regions))
    return _with_regions(found, regions)


def _image_name(regions: list[dict], config: LabelConfig) -> str:
    names = {r.get("to_name") for r in regions if r.get("to_name") is not None}
    if len(names) > 1:
        raise InvalidField(f"the context's regions point at different images: {sorted(map(str, names))}")
    if names:
        name = names.pop()
        if name not in config.images:
            raise InvalidField(f"the regions' to_name {shown(name)} is not an <Image> of `label_config`")
        return name
    if len(config.images) != 1:
        raise InvalidField("the context's regions have no `to_name`, and `label_config` has "
                           f"{len(config.images)} <Image> tags: say which one")
    return next(iter(config.images))


def _original_size(regions: list[dict]) -> tuple[int, int]:
    sizes = {(r.get("original_width"), r.get("original_height")) for r in regions}
    width, height = sizes.pop() if len(sizes) == 1 else (None, None)
    if not (_whole(width) and _whole(height)):
        raise InvalidPrompt("every region of `params.context.result` needs the same `original_width` and "
                            "`original_height`: the image's size in pixels")
    return int(width), int(height)


def _with_regions(found: Interaction, regions: list[dict]) -> Interaction:
    points, labels, box, label = [], [], None, None
    for index, region in enumerate(regions):
        where = f"params.context.result[{index}]"
        kind = str(region["type"]).lower()
        value = region.get("value")
        if not isinstance(value, dict):
            raise InvalidPrompt(f"`{where}.value` must be an object; got {shown(value)}")
        if region.get("image_rotation") not in (None, 0) or value.get("rotation") not in (None, 0):
            raise InvalidPrompt(f"`{where}` is rotated; SAM 2 takes clicks and boxes on the image as it is stored")
        x, y = _percent(value, "x", where), _percent(value, "y", where)
        if kind in POINT_TYPES:
            positive = region.get("is_positive", True)
            if positive not in (True, False, 0, 1):
                raise InvalidPrompt(f"`{where}.is_positive` must be true or false; got {shown(positive)}")
            points.append((x, y))
            labels.append(int(positive))
        else:
            box = (x, y, _percent(value, "width", where), _percent(value, "height", where))  # the last one counts
        names = value.get(kind)
        if isinstance(names, list) and names and isinstance(names[0], str):
            label = names[0]
    if len(points) > MAX_POINTS:
        raise InvalidPrompt(f"the context holds {len(points)} keypoints; the limit is {MAX_POINTS}")
    return Interaction(found.image_url, found.image_field, found.image_name, found.outputs, points, labels, box,
                       found.size, label)


def _percent(value: dict, name: str, where: str) -> float:
    number = value.get(name)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not abs(number) <= 1e6:  # NaN too
        raise InvalidPrompt(f"`{where}.value.{name}` must be a number (percent of the image); got {shown(number)}")
    return float(number)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class Backend:
    """The three routes' work: ``setup`` and ``webhook`` answer at once; ``predict`` fetches the
    task's image, runs /segment's pipeline and answers Label Studio's regions."""

    def __init__(self, pipeline: Pipeline, images: TaskImages, model_version: str,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.pipeline = pipeline
        self.images = images
        self.model_version = model_version
        self.max_response_bytes = max_response_bytes

    def setup(self, schema: Any) -> bytes:
        parse_label_config(schema, "schema").check_usable("schema")
        return json.dumps({"model_version": self.model_version}).encode()

    def predict(self, tasks: Any, label_config: Any, params: Any, timer: StageTimer,
                tenant: str | None) -> tuple[bytes, Result | None]:
        """The answer's body, and the pipeline's result (None: no click, nothing run)."""
        with timer.stage("read"):
            interaction = parse_predict(tasks, label_config, params)
        if interaction is None:
            return json.dumps({"results": [], "model_version": self.model_version}).encode(), None
        load = self.images.locate(interaction.image_url, interaction.image_field)
        with timer.stage("fetch"):
            data = load()
        width, height = imaging.upright_size(data) or interaction.size  # percent of the image itself
        prompt = interaction.prompt(width, height)
        result = self.pipeline.run(ImageRequest(upload=data), [prompt], timer, tenant, None, FORMATS)
        with timer.stage("labelstudio_answer"):
            body = self.answer(result, interaction)
        return body, result

    def answer(self, result: Result, interaction: Interaction) -> bytes:
        stored = result.masks[0]
        mask = from_coco_rle(stored.details["rle"]["counts"], result.height, result.width)
        score = round(float(stored.score), 6)
        values = mask_values(mask, interaction.outputs, self.max_response_bytes)
        regions = [region(output, interaction, values[output.tag in BRUSH_TAGS], score, result.width, result.height)
                   for output in interaction.outputs]
        prediction: dict[str, Any] = {"result": regions, "score": score, "model_version": self.model_version}
        if stored.url is not None:
            prediction["mask_url"] = stored.url
        return json.dumps({"results": [prediction], "model_version": self.model_version},
                          separators=(",", ":")).encode()

    @staticmethod
    def webhook(action: Any) -> bytes:
        # Echoed back on an open route: Label Studio's event names only, not a caller's megabyte of text.
        if not isinstance(action, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", action):
            raise InvalidField("a webhook body needs an `action`, Label Studio's event name (e.g. ANNOTATION_CREATED: "
                               f"letters, digits and _, at most 64); got {shown(action)}")
        return json.dumps({"status": "ignored", "action": action,
                           "reason": "this backend does not train: SAM 2 answers clicks with its weights as they are"
                           }).encode()


def mask_values(mask: np.ndarray, outputs: list[Control], max_bytes: int) -> dict[bool, dict[str, Any]]:
    """The mask as each kind of tag in ``outputs`` holds it (True: brush RLE; False: a PNG data URL),
    each made once however many tags share it; 422 when the regions would take over ``max_bytes``."""
    values: dict[bool, dict[str, Any]] = {}
    sizes: dict[bool, int] = {}
    for brush in sorted({output.tag in BRUSH_TAGS for output in outputs}):
        if brush:
            rle = brush_rle.encode(mask)
            values[brush], sizes[brush] = {"format": "rle", "rle": rle}, 4 * len(rle)  # at most "255,"
        else:
            url = bitmask_data_url(mask)
            values[brush], sizes[brush] = {"imageDataURL": url}, len(url)
    total = sum(sizes[output.tag in BRUSH_TAGS] for output in outputs)
    if total > max_bytes:
        raise ResponseTooLarge(
            f"the {len(outputs)} mask tags' regions would take {total} bytes; the limit is {max_bytes} bytes "
            "(SAM2_MAX_RESPONSE_BYTES): point fewer <BrushLabels>/<BitmaskLabels> at the image, or label a "
            "smaller image")
    return values


def region(output: Control, interaction: Interaction, shared: dict[str, Any], score: float, width: int,
           height: int, region_id: Callable[[], str] = lambda: secrets.token_urlsafe(8)[:10]) -> dict:
    """One mask tag's region: ``shared`` (the mask as :func:`mask_values` made it for the tag's kind)
    and the tag's label."""
    value = dict(shared)
    label = interaction.label if interaction.label in output.labels else (output.labels or (None,))[0]
    if output.tag.endswith("labels") and label is not None:
        value[output.tag] = [label]
    return {"id": region_id(), "from_name": output.name, "to_name": interaction.image_name, "type": output.tag,
            "original_width": width, "original_height": height, "image_rotation": 0, "value": value,
            "score": score, "readonly": False}


def bitmask_data_url(mask: np.ndarray) -> str:
    """``mask`` as Label Studio's bitmask tags hold one: a PNG data URL, black opaque pixels on the
    object and transparent ones elsewhere. Written as a 1-bit palette PNG (black, black; alpha 0,
    255), which browsers and Pillow read as that RGBA image."""
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), imaging.pack_mask(mask), "raw", "P;1")
    image.putpalette([0, 0, 0, 0, 0, 0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=b"\x00\xff", compress_level=imaging.PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_backend(settings: Any, pipeline: Pipeline) -> Backend:
    """The routes' work, wired from ``settings``: task images from Label Studio, S3 or the web."""
    key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None
    images = TaskImages(pipeline.sources, settings.sam2_max_upload_bytes, settings.label_studio_url, key)
    return Backend(pipeline, images, settings.sam2_model.rsplit("/", 1)[-1], pipeline.max_response_bytes)


def health(request: Any) -> JSONResponse:
    """What the stock backend's health check answers; open, like /livez."""
    return JSONResponse({"status": "UP", "model_class": "SAM2"})


# GET /labelstudio/health (and /labelstudio/): mounted beside the API routes, which it does not shadow.
HEALTH = Starlette(routes=[Route(path, health, methods=["GET"]) for path in HEALTH_PATHS])

TasksField = _documented(
    list[dict[str, Any]],
    "The task that was clicked, as Label Studio sends it: its `data` holds the image's URL under the field "
    "that the config's <Image value=\"$field\"> names (a Label Studio path such as /data/upload/..., "
    "s3://bucket/key from S3_INPUT_BUCKETS, or a public https:// URL).",
)
LabelConfigField = _documented(str, "The project's labelling config (XML).")
ParamsField = _documented(
    dict[str, Any],
    "Label Studio's `params`; `context.result` holds the smart keypoints (`keypointlabels`, `is_positive`) "
    "and rectangle (`rectanglelabels`), in percent of the image. Without a context the answer has no results.",
)
ProjectField = _documented(str, "Label Studio's project id, \"<id>.<created_at>\" (not used).")
ModelVersionField = _documented(str, "The model version Label Studio has (not used).")
SchemaField = _documented(str, "The project's labelling config (XML), checked for the tags this backend needs.")
UnusedField = _documented(Any, "Sent by Label Studio; not used (never stored or logged).")
ActionField = _documented(str, "Label Studio's event, e.g. ANNOTATION_CREATED.")


class PredictResponse(BaseModel):
    results: list[dict[str, Any]] = Field(
        description="One prediction for the clicked task, `{\"result\": [regions], \"score\", \"model_version\"}` "
        "(plus `mask_url` when S3 is configured): a `brushlabels` region (brush RLE) and/or a `bitmasklabels` one "
        "(PNG data URL) per mask tag of the clicked image; empty without a click."
    )
    model_version: str


class SetupResponse(BaseModel):
    model_version: str = Field(description="The SAM 2.1 variant served, e.g. sam2.1-hiera-tiny.")


class WebhookResponse(BaseModel):
    status: str = Field(description="Always `ignored`: this backend does not train.")
    action: str
    reason: str
