"""The BentoML services: ``SAM2API`` (HTTP, images, PNGs, S3) in front of ``SAM2Model`` (SAM 2 on
the GPU). The logic lives in ``src/sam2_api``.

Two services, because the GPU must not wait for the CPU: multipart parsing, image decoding,
hashing, PNG encoding and S3 uploads run in the API service's worker processes, and the model
service's one process does nothing but drive the device (docs/PERFORMANCE.md has the numbers).
Locally ``bentoml serve`` runs both; BentoCloud and Kubernetes scale them separately.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import bentoml
from starlette.responses import JSONResponse
from starlette.staticfiles import StaticFiles

import sam2_api
from sam2_api import errors
from sam2_api.config import Settings
from sam2_api.everything_pipeline import EverythingResult, segment_everything
from sam2_api.everything_protocol import EverythingParams, EverythingReply, parse_output, parse_params
from sam2_api.everything_schemas import EverythingFields as Everything
from sam2_api.everything_schemas import EverythingResponse
from sam2_api.guard import RequestGuard
from sam2_api.http_metrics import label_metrics_by_route
from sam2_api.pipeline import ImageRequest, Result, build_pipeline
from sam2_api.prompts import Prompt
from sam2_api.protocol import ModelReply, RawImage
from sam2_api.schemas import (
    BoxField, ImageField, ImageIdField, ImageUrlField, LabelsField, MultimaskField, ObjectMask, ObjectsField,
    ObjectsResponse, PointsField, SegmentResponse, parse_image_id, parse_image_url, parse_objects,
)
from sam2_api.timing import StageTimer

logging.getLogger("sam2_api").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING

SETTINGS = Settings()
# Weights packaged into the Bento: scripts/build_bento.sh names them (SAM2_BENTO_MODEL) so that
# `bentoml build` references the model and `bentoml containerize` copies it into the image.
BENTO_MODEL = SETTINGS.sam2_bento_model


@bentoml.service(
    # One replica = one GPU (CPU works too: BentoML only warns that no GPU is there to assign).
    resources={"gpu": 1, "gpu_type": "nvidia-l4"},
    workers=1,
    # Calls wait here for the one device thread (sam2_api.device); waiting threads cost no CPU.
    threads=32,
    traffic={"timeout": 300, "max_concurrency": 64},
)
class SAM2Model:
    """SAM 2 on the device, with the embedding cache. Called by SAM2API only."""

    weights = bentoml.models.BentoModel(BENTO_MODEL) if BENTO_MODEL else None

    @bentoml.on_deployment
    def fetch_weights() -> None:
        """Once, before any worker starts: download the weights if they come from Hugging Face, so
        that the worker finds them cached and a failure stops the server with one line, not a
        worker restarting forever."""
        if BENTO_MODEL is None:
            from sam2_api.model import resolve_weights  # torch: only where the model runs

            try:
                resolve_weights(SETTINGS)
            except errors.ModelLoadError as exc:
                raise SystemExit(f"error: {exc}") from None

    def __init__(self) -> None:
        from sam2_api.engine import build_engine
        from sam2_api.model import packaged_weights

        self.engine = build_engine(SETTINGS, packaged_weights(self.weights) if self.weights is not None else None)

    @bentoml.api
    def predict(self, key: str, prompts: list[Prompt], image: RawImage | None = None) -> ModelReply:
        return self.engine.predict(key, prompts, image)

    @bentoml.api
    def everything(self, key: str, params: EverythingParams, image: RawImage | None = None) -> EverythingReply:
        return self.engine.everything(key, params, image)


Served = TypeVar("Served", Result, EverythingResult)
CACHE_HEADER = "X-Embedding-Cache"  # "hit" when the image encoder was skipped
# Optional in practice (default None), but annotated as plain Path: BentoML 1.4.40 cannot build
# its input model for Optional[Path] (its file schema is unhashable inside a Union).
OptionalImage = Annotated[Path, ImageField]


def error_response(ctx: bentoml.Context, exc: errors.RequestError) -> JSONResponse:
    """Our request errors, as `{"error": message}` with their status (BentoML would hide a 403's).
    The status goes on the context too: BentoML sets it on any response of an API that takes one."""
    ctx.response.status_code = exc.status
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


# The click-to-segment page: static files calling the same POST /segment as any client.
@bentoml.asgi_app(StaticFiles(directory=Path(sam2_api.__file__).parent / "ui", html=True), path="/ui")
@bentoml.service(
    workers=SETTINGS.sam2_api_workers,
    # Each request mostly waits: for the model service, for S3.
    threads=16,
    # Beyond this many in flight, requests get 429 at once instead of queueing past the timeout;
    # docs/DEPLOY.md says how to size both for a replica.
    traffic={"timeout": 300, "max_concurrency": 64},
)
class SAM2API:
    """SAM 2 segmentation: send an image and a click or a box, get the URL of a PNG mask on S3."""

    model = bentoml.depends(SAM2Model)

    @bentoml.on_deployment
    def say_where_to_go() -> None:
        logging.getLogger("sam2_api").info(
            "people: open /ui (click to segment); programs: POST /segment, documented at / (OpenAPI: /docs.json)"
        )

    def __init__(self) -> None:
        self.pipeline = build_pipeline(SETTINGS, self.model)
        if self.pipeline.store.disabled_reason and bentoml.server_context.worker_index in (None, 1):
            logging.getLogger("sam2_api").warning(self.pipeline.store.disabled_reason)  # once, not per worker

    def _run(self, ctx: bentoml.Context, image: Path | None, image_id, image_url,
             serve: Callable[..., Served]) -> Served:
        """``serve(request, timer, tenant)`` for the request's image, with the timing and cache headers."""
        timer = StageTimer()
        with timer.stage("read"):
            upload = image.read_bytes() if image else None
        request = ImageRequest(upload, parse_image_url(image_url), parse_image_id(image_id))
        tenant = getattr(ctx.request.state, "tenant", None)  # set by RequestGuard when API keys are on
        try:
            result = serve(request, timer, tenant)
        finally:
            ctx.response.headers["Server-Timing"] = timer.server_timing()
        ctx.response.headers[CACHE_HEADER] = "hit" if result.cached else "miss"
        return result

    def _prompted(self, prompts: list[Prompt]) -> Callable[..., Result]:
        return lambda request, timer, tenant: self.pipeline.run(request, prompts, timer, tenant)

    @bentoml.api
    def segment(
        self,
        ctx: bentoml.Context,
        image: OptionalImage = None,
        points: PointsField = None,
        labels: LabelsField = None,
        box: BoxField = None,
        multimask_output: MultimaskField = None,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
    ) -> SegmentResponse:
        """Segment one object from clicks and/or a box; the PNG mask goes to S3, its URL comes back.

        Give the image as `image` (a file), `image_url` (s3://… or https://…) or, for an image sent
        before, just its `image_id`. Errors, each with `{"error": "<what is wrong>"}`: 400 bad
        prompt, image or field; 401 missing/wrong API key (when keys are configured); 403 an
        `image_url` this service may not read; 404 an unknown `image_id` sent alone; 408 body too
        slow; 413 upload or image too large; 415 not an image; 429 too many requests in flight.
        """
        try:
            prompt = Prompt.parse(points=points, labels=labels, box=box, multimask_output=multimask_output)
            result = self._run(ctx, image, image_id, image_url, self._prompted([prompt]))
        except errors.RequestError as exc:
            return error_response(ctx, exc)
        mask = result.masks[0]
        return SegmentResponse(mask_url=mask.url, score=mask.score, width=result.width, height=result.height)

    @bentoml.api
    def segment_objects(
        self,
        ctx: bentoml.Context,
        objects: ObjectsField = None,
        image: OptionalImage = None,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
    ) -> ObjectsResponse:
        """Segment several objects in one image, one prompt each: one encoder pass, one mask each.

        `objects` is a list of prompts with the fields of /segment; the response lists the masks
        in the same order. Errors as for /segment.
        """
        try:
            result = self._run(ctx, image, image_id, image_url, self._prompted(parse_objects(objects)))
        except errors.RequestError as exc:
            return error_response(ctx, exc)
        return ObjectsResponse(objects=[ObjectMask(mask_url=m.url, score=m.score) for m in result.masks],
                               width=result.width, height=result.height)

    @bentoml.api
    def segment_everything(
        self,
        ctx: bentoml.Context,
        image: OptionalImage = None,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
        points_per_side: Everything.points_per_side = None,
        points_per_batch: Everything.points_per_batch = None,
        pred_iou_thresh: Everything.pred_iou_thresh = None,
        stability_score_thresh: Everything.stability_score_thresh = None,
        stability_score_offset: Everything.stability_score_offset = None,
        box_nms_thresh: Everything.box_nms_thresh = None,
        crop_n_layers: Everything.crop_n_layers = None,
        crop_nms_thresh: Everything.crop_nms_thresh = None,
        crop_overlap_ratio: Everything.crop_overlap_ratio = None,
        crop_n_points_downscale_factor: Everything.crop_n_points_downscale_factor = None,
        min_mask_region_area: Everything.min_mask_region_area = None,
        use_m2m: Everything.use_m2m = None,
        multimask_output: Everything.multimask_output = None,
        max_objects: Everything.max_objects = None,
        formats: Everything.formats = None,
        polygon_tolerance: Everything.polygon_tolerance = None,
        per_object_masks: Everything.per_object_masks = None,
    ) -> EverythingResponse:
        """Segment every object in the image (Meta's automatic mask generator): each object's PNG mask
        and one 16-bit label map go to S3; objects come largest first.

        The image as for /segment; the generator's parameters with Meta's names and defaults. Bounds:
        400 when the points or crop layers are too many for the image (the message names the limit),
        503 when the request would run past SAM2_EVERYTHING_DEADLINE_S (the message says what to
        reduce). Other errors as for /segment.
        """
        try:
            params = parse_params(
                points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
                box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
                crop_overlap_ratio=crop_overlap_ratio, crop_n_points_downscale_factor=crop_n_points_downscale_factor,
                min_mask_region_area=min_mask_region_area, use_m2m=use_m2m, multimask_output=multimask_output,
                max_objects=max_objects,
            )
            output = parse_output(formats, polygon_tolerance, per_object_masks)
            result: EverythingResult = self._run(
                ctx, image, image_id, image_url,
                lambda request, timer, tenant: segment_everything(self.pipeline, request, params, output, timer,
                                                                  tenant),
            )
        except errors.RequestError as exc:
            return error_response(ctx, exc)
        return EverythingResponse.of(result)


# API keys and the upload size limit, checked before BentoML reads the body; health, metrics and
# the OpenAPI page stay open.
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths={api.route for api in SAM2API.apis.values()},
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=SETTINGS.sam2_max_upload_bytes,
    body_timeout_s=SETTINGS.sam2_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields={name for api in SAM2API.apis.values() for name in api.input_spec.multipart_fields},
)
label_metrics_by_route()  # before BentoML builds the app: /metrics labelled by route, not raw path
