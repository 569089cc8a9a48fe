"""CVAT's interactor protocol on top of /segment: the body CVAT sends, the answer CVAT reads.

What CVAT sends (cvat-ai/cvat, ``cvat/apps/lambda_manager/views.py``, ``LambdaFunction.invoke``,
the ``FunctionKind.INTERACTOR`` branch): a JSON object posted with ``requests``' ``json=``::

    {"image": base64.b64encode(<the frame's encoded bytes>).decode("utf-8"),   # _get_image()
     "pos_points": [[x, y], ...], "neg_points": [[x, y], ...],
     "obj_bbox": [[x1, y1], [x2, y2]] | None}

(older releases built ``obj_bbox`` from the first two ``pos_points`` when the function's
``startswith_box`` annotation was set, and ``None`` otherwise). The function's answer is handed to
the browser unchanged (``gateway.invoke`` → ``reply.json()``; only detectors and trackers are
rewritten there).

What CVAT reads (``cvat-ui/src/components/annotation-page/standard-workspace/controls-side-bar/
tools-control.tsx``, ``runInteractionRequest``): ``response.mask``, rows of 0/1 values
(``mask.length`` rows of ``mask[0].length``); ``response.bounds`` ``[xtl, ytl, xbr, ybr]``, the
inclusive pixel box where that mask lies in the frame (without it the mask must cover the whole
frame: ``rle.push(0, 0, width - 1, height - 1)``); ``response.points``, a polygon, which the browser
traces from the mask itself with OpenCV when it is absent (``receivePointsFromMask``). The mask
becomes CVAT's RLE (``core.utils.mask2Rle(response.mask.flat())`` plus the bounds), or a polygon
when the user turns on "Convert masks to polygons". CVAT's own SAM function answers with a
``{"blob": <embedding>}`` that only the browser plugin ``cvat-ui/plugins/sam`` understands, for a
function named ``pth-facebookresearch-sam-vit-h`` (hence another name in deploy/cvat/function.yaml).

Here: the prompt is /segment's (``pos_points`` label 1, then ``neg_points`` label 0, ``obj_bbox`` as
``box``), with /segment's defaults (the best of SAM 2's three masks for a lone click); the answer is
``{"mask": rows cropped to "bounds", "bounds": [...]}``, plus ``mask_url`` when S3 is configured
(CVAT ignores fields it does not read). An empty mask is ``{"mask": [[0]], "bounds": [0, 0, 0, 0],
"points": []}``: the browser would fail to trace a polygon from no pixels.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..config import MAX_RESPONSE_BYTES
from ..errors import ImageTooLarge, InvalidImage, InvalidPrompt, ResponseTooLarge
from ..maskformats import from_coco_rle
from ..prompts import MAX_POINTS, Prompt
from .fields.common import shown
from .fields.segment import _documented
from .segment import Result

ROUTE = "/cvat/interactor"
FORMATS = ("rle",)  # the mask comes back from the pipeline as COCO RLE, pixel-exact and small
POINTS_BYTES = 64 * 1024  # what a body holds besides the image: 64 points and a box, many times over
# The values a body may hold (its commas and brackets; base64 has none): 64 points and a box, many times
# over. The body's size is allowed for the image's base64, not for millions of parsed points: 24 MB of
# [1.5,2.5] pairs took the server 828 MB and 14 s before the route refused them.
MAX_JSON_ITEMS = 4096
_DATA_URL = re.compile(r"^data:[^,]{0,200};base64,", re.IGNORECASE)

ImageField = _documented(
    str,
    "The frame's encoded bytes (JPEG, PNG, ...) in base64, as CVAT sends them. At most "
    "SAM2_MAX_UPLOAD_BYTES once decoded.",
)
PosPointsField = _documented(
    list[list[float]], "Clicks on the object, [[x, y], ...] in pixels of the frame (label 1).",
    examples=[[[256, 200]]],
)
NegPointsField = _documented(
    list[list[float]], "Clicks on the background, [[x, y], ...] in pixels (label 0).", examples=[[]],
)
ObjBboxField = _documented(
    list[list[float]] | None, "A box around the object, [[x1, y1], [x2, y2]] in pixels (opposite corners), or null.",
)


class CvatResponse(BaseModel):
    """What CVAT's browser reads: the mask's rows within ``bounds``."""

    mask: list[list[int]] = Field(description="Rows of 0/1 values: the mask within `bounds`.")
    bounds: list[int] = Field(description="[xtl, ytl, xbr, ybr], the inclusive pixel box of `mask` in the frame.")
    points: list[list[int]] | None = Field(None, description="Present (empty) only when the mask is empty.")
    mask_url: str | None = Field(None, description="The full-size PNG mask in S3, when S3 is configured.")


@dataclass(frozen=True)
class CvatRequest:
    image: bytes
    prompt: Prompt


def body_limit(max_upload_bytes: int) -> int:
    """The largest JSON body this route takes: the image's limit in base64, plus the prompt."""
    return 4 * math.ceil(max_upload_bytes / 3) + POINTS_BYTES


def parse_request(image: Any, pos_points: Any, neg_points: Any, obj_bbox: Any, max_upload_bytes: int) -> CvatRequest:
    """CVAT's fields as our prompt and image bytes; 400 (413 for an image over the limit) with a
    message naming CVAT's fields."""
    positive = _points(pos_points, "pos_points")
    negative = _points(neg_points, "neg_points")
    box = _box(obj_bbox)
    if len(positive) + len(negative) > MAX_POINTS:
        raise InvalidPrompt(f"`pos_points` and `neg_points` hold {len(positive) + len(negative)} points together; "
                            f"the limit is {MAX_POINTS}")
    if not positive and not negative and box is None:
        raise InvalidPrompt("send at least one point in `pos_points`, or a box in `obj_bbox`")
    points = positive + negative
    prompt = Prompt.parse(points=points or None, labels=[1] * len(positive) + [0] * len(negative) if points else None,
                          box=box)
    return CvatRequest(decode_image(image, max_upload_bytes), prompt)


def decode_image(value: Any, max_upload_bytes: int) -> bytes:
    """The ``image`` field's bytes: base64 (standard alphabet, padded; a ``data:…;base64,`` prefix is
    allowed), at most ``max_upload_bytes`` once decoded (counted before decoding, too)."""
    if value is None:
        raise InvalidImage("send the frame as `image`: its encoded bytes (JPEG, PNG, ...) in base64")
    if not isinstance(value, str):
        raise InvalidImage(f"`image` must be a string of base64; got {shown(value)}")
    text = _DATA_URL.sub("", value, count=1).strip()
    if 3 * (len(text) // 4) > max_upload_bytes + 2:  # padding: up to 2 bytes fewer than that
        raise ImageTooLarge.in_bytes(max_upload_bytes)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("`image` is not valid base64: send the frame's bytes encoded with the standard "
                           "alphabet (A-Z a-z 0-9 + /) and `=` padding") from None
    if not data:
        raise InvalidImage("`image` is empty")
    if len(data) > max_upload_bytes:
        raise ImageTooLarge.in_bytes(max_upload_bytes)
    return data


def _points(value: Any, name: str) -> list[list[float]]:
    """A list of [x, y] numbers; absent or null is no points."""
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(_finite(v) for v in p)
                                       for p in value):
        return [[float(x), float(y)] for x, y in value]
    raise InvalidPrompt(f"`{name}` must be a list of [x, y] pairs in pixels, e.g. [[320, 200]]; got {shown(value)}")


def _box(value: Any) -> list[float] | None:
    """``obj_bbox``: two opposite corners ``[[x1, y1], [x2, y2]]`` (or flat ``[x1, y1, x2, y2]``), in any
    order, as ``[left, top, right, bottom]``; null is no box."""
    if value is None:
        return None
    corners = value
    if isinstance(value, list) and len(value) == 4 and all(_finite(v) for v in value):
        corners = [value[:2], value[2:]]
    if not (isinstance(corners, list) and len(corners) == 2
            and all(isinstance(c, list) and len(c) == 2 and all(_finite(v) for v in c) for c in corners)):
        raise InvalidPrompt(f"`obj_bbox` must be [[x1, y1], [x2, y2]] in pixels, or null; got {shown(value)}")
    (x1, y1), (x2, y2) = corners
    return [float(min(x1, x2)), float(min(y1, y2)), float(max(x1, x2)), float(max(y1, y2))]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def response_body(result: Result, max_bytes: int = MAX_RESPONSE_BYTES) -> bytes:
    """The JSON CVAT reads for the pipeline's one mask (run with :data:`FORMATS`); 422 when its rows
    would take over ``max_bytes`` (``SAM2_MAX_RESPONSE_BYTES``, as for /segment's formats): two bytes a
    pixel of the mask's box, so a frame-filling mask of a few-kilobyte 50-megapixel PNG would be 100 MB."""
    stored = result.masks[0]
    x1, y1, x2, y2 = stored.details["bbox"]  # x2, y2 exclusive; all 0 for an empty mask
    fields: dict[str, Any] = {}
    if stored.details["area"] == 0:
        rows, fields["bounds"], fields["points"] = b"[[0]]", [0, 0, 0, 0], []
    else:
        size = (y2 - y1) * (2 * (x2 - x1) + 2) + 1
        if size > max_bytes:
            raise ResponseTooLarge(
                f"the mask's rows within its bounds ({x2 - x1}x{y2 - y1} pixels) would take {size} bytes; the limit "
                f"is {max_bytes} bytes (SAM2_MAX_RESPONSE_BYTES): send a smaller frame, or use /segment's mask_url")
        full = from_coco_rle(stored.details["rle"]["counts"], result.height, result.width)
        rows, fields["bounds"] = json_rows(full[y1:y2, x1:x2]), [x1, y1, x2 - 1, y2 - 1]
    if stored.url is not None:
        fields["mask_url"] = stored.url
    return b'{"mask":' + rows + b"," + json.dumps(fields, separators=(",", ":")).encode()[1:]


def json_rows(mask: np.ndarray) -> bytes:
    """``mask`` (H, W) as the JSON text ``[[0,1,...],...]``, written in numpy: a frame's mask holds
    millions of values, which json.dumps would take a second for."""
    height, width = mask.shape
    text = np.full((height, 2 * width + 2), ord(","), dtype=np.uint8)  # "[v,v,...,v],"
    text[:, 0] = ord("[")
    text[:, 1:2 * width:2] = mask.astype(np.uint8) + ord("0")
    text[:, 2 * width] = ord("]")
    return b"[" + text.tobytes()[:-1] + b"]"
