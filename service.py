"""The BentoML service: routes, resources and wiring. The logic lives in ``src/sam2_api``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import bentoml
from starlette.responses import JSONResponse
from starlette.staticfiles import StaticFiles

import sam2_api

from sam2_api import errors
from sam2_api.batching import EncoderBatcher
from sam2_api.cache import EmbeddingCache
from sam2_api.config import Settings
from sam2_api.errors import ModelLoadError
from sam2_api.guard import RequestGuard
from sam2_api.http_metrics import label_metrics_by_route
from sam2_api.model import load_sam2, packaged_weights, pick_device, resolve_weights
from sam2_api.pipeline import Pipeline, Result
from sam2_api.prompts import Prompt
from sam2_api.schemas import (
    BoxField, ImageField, ImageIdField, ImageUrlField, LabelsField, MultimaskField, ObjectsField, ObjectsResponse,
    PointsField, SegmentResponse,
)
from sam2_api.segmenter import Segmenter
from sam2_api.sources import ImageSources
from sam2_api.storage import MaskStore, make_s3_client

logging.getLogger("sam2_api").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING

CACHE_HEADER = "X-Embedding-Cache"  # "hit" when the image encoder was skipped
# Optional in practice (default None), but annotated as plain Path: BentoML 1.4.40 cannot build
# its input model for Optional[Path] (its file schema is unhashable inside a Union).
OptionalImage = Annotated[Path, ImageField]


def error_response(ctx: bentoml.Context, exc: errors.RequestError) -> JSONResponse:
    """Our request errors, as `{"error": message}` with their status (BentoML would hide a 403's).
    The status goes on the context too: BentoML sets it on any response of an API that takes one."""
    ctx.response.status_code = exc.status
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


# Weights packaged into the Bento: scripts/build_bento.sh names them (SAM2_BENTO_MODEL) so that
# `bentoml build` references the model and `bentoml containerize` copies it into the image.
SETTINGS = Settings()
BENTO_MODEL = SETTINGS.sam2_bento_model


# The click-to-segment page: static files calling the same POST /segment as any client.
@bentoml.asgi_app(StaticFiles(directory=Path(sam2_api.__file__).parent / "ui", html=True), path="/ui")
@bentoml.service(
    # One replica = one GPU (CPU works too: BentoML only warns that no GPU is there to assign).
    resources={"gpu": 1, "gpu_type": "nvidia-l4"},
    # Model work is serialized inside Segmenter; the extra threads decode images, encode PNGs
    # and upload to S3 while the model is busy with the next request.
    threads=4,
    # Beyond 32 in flight, requests get 429 at once instead of queueing past the timeout;
    # docs/DEPLOY.md says how to size both for a replica.
    traffic={"timeout": 300, "max_concurrency": 32},
)
class SAM2Segment:
    weights = bentoml.models.BentoModel(BENTO_MODEL) if BENTO_MODEL else None

    @bentoml.on_deployment
    def fetch_weights() -> None:
        """Once, before any worker starts: download the weights if they come from Hugging Face, so
        that workers find them cached and a failure stops the server with one line, not a
        worker restarting forever."""
        if BENTO_MODEL is None:
            try:
                resolve_weights(SETTINGS)
            except ModelLoadError as exc:
                raise SystemExit(f"error: {exc}") from None

    def __init__(self) -> None:
        settings = SETTINGS
        device = pick_device(settings.sam2_device)
        packaged = packaged_weights(self.weights) if self.weights is not None else None
        model = load_sam2(resolve_weights(settings, packaged), device, settings.sam2_compile)
        segmenter = Segmenter(model)
        segmenter.warm_up()
        batcher = None
        if settings.sam2_encoder_batch > 1:
            batcher = EncoderBatcher(segmenter, settings.sam2_encoder_batch, settings.sam2_encoder_batch_wait_ms / 1000)
        self.pipeline = Pipeline(
            segmenter,
            EmbeddingCache(settings.sam2_cache_max_entries, settings.cache_max_bytes(device.type)),
            MaskStore(settings),
            ImageSources(make_s3_client(settings), settings.input_buckets, settings.sam2_max_upload_bytes),
            settings.sam2_max_image_pixels,
            encode=batcher.encode if batcher else None,
        )

    def _run(self, ctx: bentoml.Context, image: Path | None, prompts: list[Prompt], image_id: str | None,
             image_url: str | None) -> Result:
        result = self.pipeline.run(image.read_bytes() if image else None, prompts, image_id, image_url)
        ctx.response.headers[CACHE_HEADER] = "hit" if result.cached else "miss"
        return result

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
        prompt, image or JSON; 401 missing/wrong API key (when keys are configured); 403 an
        `image_url` this service may not read; 404 an unknown `image_id` sent alone; 411 no
        Content-Length; 413 upload or image too large; 415 not an image; 429 too many requests in
        flight.
        """
        try:
            prompt = Prompt.parse(points=points, labels=labels, box=box, multimask_output=multimask_output)
            result = self._run(ctx, image, [prompt], image_id, image_url)
        except errors.RequestError as exc:
            return error_response(ctx, exc)
        mask = result.masks[0]
        return SegmentResponse(mask_url=mask.url, score=mask.score, width=result.width, height=result.height)

    @bentoml.api
    def segment_objects(
        self,
        ctx: bentoml.Context,
        objects: ObjectsField,
        image: OptionalImage = None,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
    ) -> ObjectsResponse:
        """Segment several objects in one image, one prompt each: one encoder pass, one mask each.

        `objects` is a list of prompts with the fields of /segment; the response lists the masks
        in the same order. Errors as for /segment.
        """
        try:
            result = self._run(ctx, image, objects, image_id, image_url)
        except errors.RequestError as exc:
            return error_response(ctx, exc)
        return ObjectsResponse.from_result(result)


# API keys and the upload size limit, checked before BentoML reads the body; health, metrics and
# the OpenAPI page stay open.
SAM2Segment.add_asgi_middleware(
    RequestGuard,
    paths={api.route for api in SAM2Segment.apis.values()},
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=SETTINGS.sam2_max_upload_bytes,
)
label_metrics_by_route()  # before BentoML builds the app: /metrics labelled by route, not raw path
