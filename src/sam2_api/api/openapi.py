"""The OpenAPI document users generate clients from: BentoML's, made valid and made ours.

BentoML 1.4 declares OpenAPI 3.0.2 but writes 3.1 constructs (``type: "null"`` in ``anyOf``,
``examples`` lists), types file fields ``"file"`` (neither version knows it), and describes the
service with its own boilerplate and version "None". :func:`published_spec` turns its document into
a valid OpenAPI 3.1 one about this service; :class:`PublishedOpenAPI` serves it at ``/docs.json``,
where the page at ``/`` (and any client generator) reads it. That page is ours too: BentoML's
loads Google Tag Manager on the origin where ``/ui`` keeps the API key (``csp`` says why that matters),
and hides the document's title. The same middleware answers what a newcomer tries first: ``/docs``
leads to the page, and a route called with a method it does not take (``GET /segment``) gets a 405
in our error shape, saying which methods it takes, from the same document.
"""

from __future__ import annotations

import inspect
import json
from importlib.metadata import version
from typing import Any, Awaitable, Callable

from .csp import DOCS_POLICY

TITLE = "SAM 2 segmentation API"
DESCRIPTION = """\
Send an image and a click or a box; get back the URL of a PNG mask at the image's size, stored in
S3. Runs Meta's SAM 2.1.

* People: **[click to segment in the browser](ui/)** (`/ui`).
* Programs: `POST /segment` (one object), `POST /segment_objects` (several, one encoder pass); as
  `multipart/form-data` (the image as a file), or JSON or a url-encoded form (the image by
  `image_url`, or a cached `image_id`).
* Browsers decoding clicks themselves: `POST /embed` (the image's embedding, once, as an `.npz`) and
  `GET /decoder.onnx` (SAM 2's prompt encoder + mask decoder for onnxruntime-web); `/ui` uses them.
* CVAT: `POST /cvat/interactor` takes CVAT's interactor call (the frame in base64, clicks, a box)
  and answers the mask as CVAT reads it; deploy/cvat/ has the nuclio function that forwards to it.
* Video: `POST /track/submit` tracks objects through a clip as a task (then `GET /track/status`,
  `GET /track/get`, `PUT /track/cancel`); masks per frame, a manifest and a preview MP4 go to S3.
* Errors are `{"error": "<what is wrong>"}` with their HTTP status; see each route.
* Health: `GET /livez`, `GET /readyz`; Prometheus metrics: `GET /metrics`.
"""


# BentoML's Swagger UI page (_bentoml_impl/server/main-openapi.html) without its Google Tag Manager
# snippet, inline script and links elsewhere: Swagger UI from BentoML's bundled files, reading /docs.json.
DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{TITLE}</title>
<link rel="stylesheet" href="./static_content/swagger-ui.css">
<link rel="stylesheet" href="./static_content/index.css">
<link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32">
<style>/* BentoML's index.css hides the title and shows only its version badge */
.swagger-ui .info .main .title, .swagger-ui .info .main .title span {{ visibility: visible; position: static; }}
</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js"></script>
<script src="./static_content/swagger-ui-standalone-preset.js"></script>
<script src="./static_content/swagger-initializer.js"></script>
</body>
</html>
""".encode()


# Every status our routes answer besides 200, each with the body {"error": "..."}.
ERRORS = {
    "400": "Bad request: a malformed field, prompt, image or image_url (the message says which)",
    "401": "API keys are configured and the request has none of them",
    "403": "An image_url this service may not read",
    "404": "An image_id sent alone that this server does not (or no longer) hold",
    "408": "The request (its headers or its body) arrived too slowly",
    "413": "The upload, a form field or the image is too large",
    "415": "The file is not an image in an accepted format, or the body's media type is not accepted",
    "422": "The formats asked for would make the response larger than SAM2_MAX_RESPONSE_BYTES (the message says "
           "what to reduce)",
    "429": "Too many requests in flight on this replica; retry shortly",
    "503": "The model service is not reachable right now (restarting, scaling up); retry shortly",
}
# Statuses whose meaning on one route is more than ERRORS says.
ROUTE_ERRORS = {
    "/segment_everything": {
        "503": "The request would run past SAM2_EVERYTHING_DEADLINE_S (the message says how many seconds it needs "
               "and what to reduce: points_per_side, crop_n_layers), or the model service is not reachable right now",
    },
}

# Routes whose 200 is a file, not JSON: its media type and what it holds.
FILE_ANSWERS = {
    "/embed": ("application/octet-stream", "An `.npz` (NumPy's zip of arrays): image_embeddings, image_features_0, "
                                           "image_features_1 and original_image_size. ETag; 304 on If-None-Match."),
}
# Served by a middleware (sam2_api.api.browser.DecoderFile), so absent from BentoML's document.
DECODER_PATH_ITEM = {"get": {
    "summary": "The ONNX decoder for browsers",
    "description": ("SAM 2's prompt encoder + mask decoder of the loaded weights as one ONNX model (about 16 MB), "
                    "with the input names of onnxruntime's SAM 2 exporter: image_embeddings, image_features_0, "
                    "image_features_1 (from POST /embed), point_coords (1×N×2, pixels of the upright image; a box as "
                    "two points labelled 2 and 3, first), point_labels (1×N int32), input_masks (1×1×256×256, a "
                    "previous low_res_masks entry), has_input_masks ([1] or [0]), original_image_size ([H, W] "
                    "int32). Outputs: masks (1×4×H×W logits, object where > 0: first the mask /segment returns "
                    "without multimask output, then the three candidates), iou_predictions (1×4), low_res_masks "
                    "(1×4×256×256). ETag; 304 on If-None-Match. 503 while it is being exported at start-up."),
    "operationId": "decoder_onnx",
    "tags": ["Service APIs"],
    "responses": {
        "200": {"description": "The ONNX model", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
        **{status: {"description": ERRORS[status], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}} for status in ("401", "503")},
    },
}}

# Routes whose body is JSON only (no file fields, so no form): CVAT's interactor call.
JSON_ROUTES = ("/cvat/interactor",)


def published_spec(bentoml_spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document as a valid OpenAPI 3.1 document about this service: its title,
    description and version; form fields that carry JSON described as such, with the same fields
    as an ``application/json`` body beside the form; our error bodies on every route."""
    spec = _cleaned(json.loads(json.dumps(bentoml_spec)))
    spec["openapi"] = "3.1.0"
    spec["info"] = {"title": TITLE, "version": version("sam2-api"), "description": DESCRIPTION}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string", "description": "What is wrong, in words."}}}
    _task_routes(spec)
    spec["paths"]["/decoder.onnx"] = json.loads(json.dumps(DECODER_PATH_ITEM))
    for path, item in spec["paths"].items():
        for operation in item.values():
            if "description" in operation:  # a docstring: its indentation would make code blocks in Markdown
                operation["description"] = inspect.cleandoc(operation["description"])
            content = operation.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in content:
                _form_and_json(content)
            if "multipart/form-data" in content or path in JSON_ROUTES:
                errors = {**ERRORS, **ROUTE_ERRORS.get(path, {})}
                operation["responses"] = {
                    **{k: v for k, v in operation["responses"].items() if k.startswith("2")},
                    **{status: {"description": text, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}} for status, text in errors.items()},
                }
            if path in FILE_ANSWERS:
                media_type, what = FILE_ANSWERS[path]
                operation["responses"]["200"] = {"description": what, "content": {media_type: {
                    "schema": {"type": "string", "format": "binary"}}}}
    return spec


def _task_routes(spec: dict[str, Any]) -> None:
    """A task's routes (``/track/...``): BentoML 1.4 gives ``/cancel`` the operation id of ``/retry``
    (ids must be unique); the status gains the ``progress`` that ``task_board.TaskProgress`` adds."""
    for path, item in spec["paths"].items():
        operation = item.get("put", {})
        if path.endswith("/cancel") and operation.get("operationId", "").endswith("_retry"):
            operation["operationId"] = operation["operationId"].removesuffix("_retry") + "_cancel"
            operation["x-bentoml-name"] = operation.get("x-bentoml-name", "").removesuffix("_retry") + "_cancel"
    status = spec.get("components", {}).get("schemas", {}).get("TaskStatusResponse")
    if status is not None:
        status.setdefault("properties", {})["progress"] = {"type": "object", "description": (
            "How far a tracking task is: `phase` (queued, decoding, tracking, storing, canceling, completed, "
            "failed, canceled), `frames_done` of `frames_total`, and `queue_position` while queued."), "properties": {
            "phase": {"type": "string"}, "frames_done": {"type": ["integer", "null"]},
            "frames_total": {"type": ["integer", "null"]}, "queue_position": {"type": ["integer", "null"]}}}


def _form_and_json(content: dict[str, Any]) -> None:
    """In a form every field is text: fields of JSON values become strings holding that JSON
    (``contentMediaType``/``contentSchema``), so that generated clients send them as one JSON text
    each; the same fields, as JSON values and without the files, also make an ``application/json``
    body."""
    form = content["multipart/form-data"]["schema"]
    fields = form["properties"]
    content["application/json"] = {"schema": {
        **{key: value for key, value in form.items() if key not in ("properties", "required")},
        "properties": {name: field for name, field in fields.items() if field.get("format") != "binary"},
    }}
    form["properties"] = {name: field if field.get("type") == "string" else _as_json_text(field)
                          for name, field in fields.items()}


def _as_json_text(field: dict[str, Any]) -> dict[str, Any]:
    described = {key: field[key] for key in ("title", "description") if key in field}
    value = {key: item for key, item in field.items() if key not in ("title", "description", "examples")}
    text = {**described, "type": "string", "contentMediaType": "application/json", "contentSchema": value}
    if "examples" in field:
        text["examples"] = [json.dumps(example) for example in field["examples"]]
    return text


def _cleaned(node: Any) -> Any:
    """``{"type": "file"}`` → a binary string, as OpenAPI writes an uploaded file; ``"default":
    null`` dropped (an optional field's default is its absence, and null is not of its type)."""
    if isinstance(node, dict):
        node = {key: _cleaned(value) for key, value in node.items() if not (key == "default" and value is None)}
        if node.get("type") == "file":
            node.update(type="string", format="binary", contentMediaType="application/octet-stream")
        return node
    if isinstance(node, list):
        return [_cleaned(item) for item in node]
    return node


class PublishedOpenAPI:
    """ASGI middleware: ``GET /docs.json`` answers :func:`published_spec` of ``spec()``, and ``GET /``
    the page that shows it (:data:`DOCS_PAGE`), with its Content-Security-Policy; ``/docs`` redirects
    there. A path of the document called with a method it does not list is a 405 ``{"error": ...}``
    with ``Allow`` (instead of Starlette's plain text)."""

    PATH = "/docs.json"
    PAGE = "/"
    ALIASES = ("/docs", "/docs/")  # where people look for the docs first

    def __init__(self, app: Callable[..., Awaitable[None]], *, spec: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.spec = spec
        self._body: bytes | None = None  # the document never changes while the server runs
        self._methods: dict[str, frozenset[str]] | None = None  # path: its methods, from the document

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] in self.ALIASES:
            return await _send(send, 308, b"", [(b"location", self.PAGE.encode())])
        allowed = self._allowed(scope["path"])
        if allowed and scope["method"] not in allowed | {"OPTIONS"}:  # OPTIONS: CORS preflights, when configured
            shown = sorted(allowed - {"HEAD"})
            how = " or ".join(shown)
            body = json.dumps({"error": (
                f"{scope['path']} takes {how}, not {scope['method']}"
                + (": send the fields in the body (multipart/form-data, a url-encoded form or JSON); "
                   f"the API is described at {self.PAGE} (OpenAPI: {self.PATH})" if shown == ["POST"] else "")
            )}).encode()
            return await _send(send, 405, b"" if scope["method"] == "HEAD" else body,
                               [(b"content-type", b"application/json"), (b"allow", ", ".join(shown).encode())],
                               len(body))
        served = scope["path"] in (self.PATH, self.PAGE)
        if not served or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        if scope["path"] == self.PAGE:
            body, headers = DOCS_PAGE, [(b"content-type", b"text/html; charset=utf-8"),
                                        (b"content-security-policy", DOCS_POLICY.encode())]
        else:
            if self._body is None:
                self._body = json.dumps(published_spec(self.spec())).encode()
            body, headers = self._body, [(b"content-type", b"application/json")]
        await _send(send, 200, body if scope["method"] == "GET" else b"", headers, len(body))

    def _allowed(self, path: str) -> frozenset[str]:
        """The methods the document lists for ``path`` (GET with HEAD); none for paths it does not have."""
        if self._methods is None:
            self._methods = {
                route: frozenset(m.upper() for m in item) | ({"HEAD"} if "get" in item else set())
                for route, item in self.spec().get("paths", {}).items()
            }
        return self._methods.get(path, frozenset())


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                length: int | None = None) -> None:
    """One whole response; ``length``: its Content-Length, when ``body`` is left out (HEAD)."""
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-length", str(len(body) if length is None else length).encode())]})
    await send({"type": "http.response.body", "body": body})
