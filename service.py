"""The BentoML services: ``SAM2API`` (HTTP, images, PNGs, S3) in front of ``SAM2Model`` (SAM 2 on
the GPU). The logic lives in ``src/sam2_api``.

Two services, because the GPU must not wait for the CPU: multipart parsing, image decoding,
hashing, PNG encoding and S3 uploads run in the API service's worker processes, and the model
service's one process does nothing but drive the device (docs/PERFORMANCE.md has the numbers).
Locally ``bentoml serve`` runs both; BentoCloud and Kubernetes scale them separately.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import Annotated, Generator, Iterator

import bentoml
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

import sam2_api
from sam2_api import errors, metrics
from sam2_api.api.answers import answers_request_errors
from sam2_api.api import browser, cvat, labelstudio, roboflow
from sam2_api.api.roboflow_logits import LogitsIndex
from sam2_api.api.csp import CROSS_ORIGIN_ISOLATED, PageHeaders, mask_origin, ui_policy
from sam2_api.api.everything import segment_everything
from sam2_api.api.fields.common import ModelField, parse_formats
from sam2_api.api.fields.everything import EverythingFields as Everything
from sam2_api.api.fields.everything import EverythingResponse, parse_output, parse_params
from sam2_api.api.fields.segment import (
    BoxField, ImageField, ImageIdField, ImageUrlField, LabelsField, MultimaskField, ObjectMask, ObjectsField,
    ObjectsResponse, PointsField, SegmentResponse, parse_image_id, parse_image_url, parse_objects,
)
from sam2_api.api.fields.segment import (  # refinement, candidates, mask formats
    CandidatesField, FormatsField, MaskInputField, PolygonToleranceField, PreviousMaskIdField, StepsField,
    parse_polygon_tolerance, parse_steps,
)
from sam2_api.api.fields.track import FormatsField as TrackFormatsField
from sam2_api.api.fields.track import (
    MaxFramesField, ReverseField, StartFrameField, TrackObjectsField, TrackResponse, VideoField, VideoUrlField,
)
from sam2_api.api.guard import RequestGuard
from sam2_api.api.openapi import PublishedOpenAPI
from sam2_api.api.route_metrics import label_metrics_by_route
from sam2_api.api.segment import ImageRequest, build_pipeline
from sam2_api.api.task_board import TaskBoard, TaskProgress
from sam2_api.api.track import TrackRequest, build_track_jobs
from sam2_api.config import Settings
from sam2_api.maskformats import FORMATS
from sam2_api.messages_browser import DEFAULT_DECODER, DecoderReply, EmbedDtype, EmbedReply
from sam2_api.messages import EverythingParams, EverythingReply, LowResMask, ModelReply, RawImage, TrackSpec
from sam2_api.prompts import Prompt
from sam2_api.server import header_deadline
from sam2_api.server.hop import HopGuard, prepare_client, token_for_local_serve
from sam2_api.server.lifecycle import BoundedReadiness, exit_after_grace
from sam2_api.server.state_dir import use_own_state_dir
from sam2_api.timing import StageTimer

logging.getLogger("sam2_api").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING

SETTINGS = Settings()
# Before BentoML's worker starts uvicorn: a request's headers must arrive within this bound.
header_deadline.install(SETTINGS.sam2_header_timeout_s)
# Weights packaged into the Bento, one model per size: scripts/build_bento.sh names them
# (SAM2_BENTO_MODEL) so that `bentoml build` references them and `bentoml containerize` copies them
# into the image (SAM2Model.models, below the class, lists them for BentoML).
PACKAGED_WEIGHTS = [bentoml.models.BentoModel(tag) for tag in SETTINGS.bento_models]
# This server's own folder for BentoML's task store, the track board and Prometheus' files, so that
# servers side by side on one host never wipe each other's (sam2_api.server.state_dir).
STATE_DIR = use_own_state_dir(SETTINGS.sam2_state_dir)
# Progress and cancel requests of tracking tasks, beside BentoML's own task store (one per replica).
TASK_BOARD = str(STATE_DIR / "sam2_track_progress.db")
# Which mask_id answered which Roboflow prompt set (sam2_api.api.roboflow_logits), for every worker.
ROBOFLOW_LOGITS = str(STATE_DIR / "sam2_roboflow_logits.db")


@bentoml.service(
    # One replica = one GPU (CPU works too: BentoML only warns that no GPU is there to assign).
    resources={"gpu": 1, "gpu_type": "nvidia-l4"},
    workers=1,
    # Calls wait here for the one device thread (sam2_api.model.device_thread); waiting threads cost no CPU.
    threads=32,
    # A tracking job streams its masks back as one call, so the timeout (BentoML's client applies
    # it to the whole call) is the longest job; image calls are bounded by SAM2API's timeout.
    traffic={"timeout": SETTINGS.sam2_video_job_timeout_s, "max_concurrency": 64},
)
class SAM2Model:
    """SAM 2 on the device, with the embedding cache. Called by SAM2API only."""

    @bentoml.on_deployment
    def check_device_and_fetch_weights() -> None:
        """Once, before any worker starts: check the GPU's driver, and download the weights if they
        come from Hugging Face, so that the worker finds them cached; a failure of either stops the
        server with one line, not a worker restarting forever."""
        from sam2_api.model.weights import packaged_by_size, pick_device, resolve_weights  # torch: only here

        if Settings().sam2_internal_token is None:  # read again: SAM2API's hook may have just made one
            raise SystemExit("error: SAM2_INTERNAL_TOKEN is not set: the model service served on its own takes "
                             "calls only from an API service that sends the same token (set it on both)")
        try:
            pick_device(SETTINGS.sam2_device)  # an NVIDIA driver too old for torch's CUDA: one line
            packaged = packaged_by_size(weights.resolve() for weights in PACKAGED_WEIGHTS)
            for size in SETTINGS.served_models:  # each served size, downloaded unless it is a file or packaged
                resolve_weights(SETTINGS, packaged.get(size), model=size)
        except errors.ModelLoadError as exc:
            raise SystemExit(f"error: {exc}") from None

    def __init__(self) -> None:
        from sam2_api.model.model_set import build_models
        from sam2_api.model.tracker import build_tracker
        from sam2_api.model.weights import packaged_by_size

        exit_after_grace(SETTINGS.sam2_shutdown_grace_s)  # first: a stop while the weights load must work too
        metrics.forget_dead_processes(STATE_DIR / "prometheus")  # a worker killed before this one
        # The served sizes (SAM2_MODELS): the default one loaded now, the others on first use.
        self.sizes = build_models(SETTINGS, packaged_by_size(weights.resolve() for weights in PACKAGED_WEIGHTS))
        # Video: SAM 2's video predictor, built on first use, on a size's weights and the device thread.
        self.tracker = build_tracker(SETTINGS, self.sizes)
        # The browser's decoder (GET /decoder.onnx) of each size: the Bento's (exported at import_model.py),
        # or exported from these very weights in the background, or read from the disk cache under their digest.
        from sam2_api.model.decoder_export import DecoderModels, default_cache_dir

        self.decoders = DecoderModels(default_cache_dir())
        self._start_decoder(self.sizes.default)

    @bentoml.api
    def predict(self, key: str, prompts: list[Prompt], image: RawImage | None = None,
                mask_inputs: list[LowResMask | None] | None = None, model: str | None = None) -> ModelReply:
        return self.sizes.predict(key, prompts, image, mask_inputs, model)

    @bentoml.api
    def embed(self, key: str, image: RawImage | None = None, dtype: EmbedDtype = "float16",
              model: str | None = None) -> EmbedReply:
        return self.sizes.embed(key, image, dtype, model)

    @bentoml.api
    def decoder_onnx(self, name: str = DEFAULT_DECODER) -> DecoderReply:
        """The ONNX prompt encoder + mask decoder of size ``name`` (DEFAULT_DECODER: the default size),
        loaded and exported on first use; ``pending`` while it is exported."""
        try:
            served = self.sizes.get(None if name == DEFAULT_DECODER else name)
            self._start_decoder(served)
            onnx = self.decoders.get(served.model_id, timeout_s=DECODER_WAIT_S)
        except errors.RequestError as exc:
            return DecoderReply(error=str(exc))
        except (KeyError, RuntimeError) as exc:
            return DecoderReply(error=f"no ONNX decoder for {name!r}: {exc}")
        return DecoderReply(onnx=onnx, pending=onnx is None)

    def _start_decoder(self, served) -> None:
        self.decoders.start(served.model_id, served.engine.segmenter.model, served.checkpoint, served.decoder)

    @bentoml.api
    def track(self, video: bytes, spec: TrackSpec) -> Generator[bytes, None, None]:
        """Track ``spec``'s objects through the clip ``video``: a stream of records (messages.py)."""
        yield from self.tracker.stream(video, spec)

    @bentoml.api
    def cancel_track(self, job_id: str) -> bool:
        """End tracking job ``job_id`` if it runs here; its stream stops, its memory is freed."""
        return self.tracker.cancel(job_id)

    @bentoml.api
    def everything(self, key: str, params: EverythingParams, image: RawImage | None = None,
                   deadline_s: float | None = None, model: str | None = None) -> EverythingReply:
        # a grid left out is this device's default: Meta's 32 on a GPU, smaller on a CPU (everything_protocol)
        params = params.with_default_grid(self.sizes.device_type)
        return self.sizes.everything(key, params, image, deadline_s, model)


SAM2Model.models.extend(PACKAGED_WEIGHTS)  # BentoML finds a service's models in this list


DECODER_WAIT_S = 20.0  # a call for the decoder waits this long for its export, then says "pending"
CACHE_HEADER = "X-Embedding-Cache"  # "hit" when the image encoder was skipped


@contextmanager
def timed(ctx: bentoml.Context) -> Iterator[StageTimer]:
    """A request's stage times, sent as its Server-Timing header (with the handler's total), also
    when it fails."""
    timer = StageTimer()
    started = time.perf_counter()
    try:
        yield timer
    finally:
        timer.add("total", time.perf_counter() - started)  # the whole handler: the server's time
        ctx.response.headers["Server-Timing"] = timer.server_timing()


def image_request(image: Path | None, image_id: str | None, image_url: str | None, timer: StageTimer) -> ImageRequest:
    """The request's image, however it was given: an upload (read here), an ``image_url``, an ``image_id``."""
    with timer.stage("read"):
        upload = image.read_bytes() if image else None
    return ImageRequest(upload, parse_image_url(image_url), parse_image_id(image_id))


def say_cache(ctx: bentoml.Context, cached: bool) -> None:
    ctx.response.headers[CACHE_HEADER] = "hit" if cached else "miss"


def tenant_of(ctx: bentoml.Context) -> str | None:
    """The caller's API key id, set by RequestGuard when API keys are on; None when they are off."""
    return getattr(ctx.request.state, "tenant", None)
# Optional in practice (absent: None, see ImageField), but annotated as plain Path: BentoML 1.4.40
# cannot build its input model for Optional[Path] (its file schema is unhashable inside a Union).
OptionalImage = Annotated[Path, ImageField]
OptionalMaskInput = Annotated[Path, MaskInputField]
OptionalVideo = Annotated[Path, VideoField]


# The click-to-segment page: static files calling the same POST /segment as any client; its
# Content-Security-Policy lets it load scripts and send requests here only, and show masks from the bucket.
# The ONNX decoder's bytes in this API worker, asked of the model service once (sam2_api.api.browser).
DECODER_SOURCE = browser.DecoderSource()
# The click page and its decoder worker are cross-origin isolated (threads for onnxruntime-web);
# the video page is not (its clip plays from a blob: URL and its preview from the bucket).
UI_PAGES = PageHeaders(
    PageHeaders(StaticFiles(directory=Path(sam2_api.api.__file__).parent / "ui", html=True),
                headers=lambda: CROSS_ORIGIN_ISOLATED, skip=lambda path: "video" in path),
    headers=lambda: {"Content-Security-Policy": ui_policy(mask_origin(SETTINGS))})


@bentoml.asgi_app(UI_PAGES, path="/ui")
@bentoml.asgi_app(labelstudio.HEALTH, path=labelstudio.PREFIX)
@bentoml.service(
    workers=SETTINGS.sam2_api_workers,
    # Each request mostly waits: for the model service, for S3.
    threads=16,
    # Beyond this many in flight, requests get 429 at once instead of queueing past the timeout;
    # docs/DEPLOY.md says how to size both for a replica.
    # `concurrency` (BentoCloud's autoscaling target) set here because BentoML makes it 1 for a
    # service with a task endpoint unless it is given.
    traffic={"timeout": 300, "max_concurrency": 64, "concurrency": 32},
)
class SAM2API:
    """SAM 2 segmentation: send an image and a click or a box, get the URL of a PNG mask on S3."""

    model = bentoml.depends(SAM2Model)

    @bentoml.on_deployment
    def reset_task_board() -> None:
        TaskBoard.reset(TASK_BOARD)  # once, before any worker: a fresh board, as BentoML starts a fresh task store
        LogitsIndex.reset(ROBOFLOW_LOGITS)  # the model service's logits start empty too

    @bentoml.on_deployment
    def share_internal_token() -> None:
        # Runs before SAM2Model's hooks and before any worker starts (sam2_api.server.hop).
        token_for_local_serve()

    def __init__(self) -> None:
        exit_after_grace(SETTINGS.sam2_shutdown_grace_s)
        prepare_client(self.model, SETTINGS.internal_token)
        self.pipeline = build_pipeline(SETTINGS, self.model)
        DECODER_SOURCE.bind(self.model)  # GET /decoder.onnx asks the model service through this worker's client
        if bentoml.server_context.worker_index in (None, 1):  # once, not per worker
            log = logging.getLogger("sam2_api")
            log.info("people: open /ui (click to segment); programs: POST /segment, documented at / "
                     "(OpenAPI: /docs.json)")
            if self.pipeline.store.disabled_reason:
                log.warning(self.pipeline.store.disabled_reason)
            else:  # a wrong endpoint or bucket said at start-up, in a line of its own; serving does not wait for it
                threading.Thread(target=self.pipeline.store.check_bucket, name="s3-check", daemon=True).start()
        self.tracks = build_track_jobs(SETTINGS, self.model, self.pipeline.store, TASK_BOARD)
        self.labelstudio = labelstudio.build_backend(SETTINGS, self.pipeline)
        self.roboflow = roboflow.RoboflowRoutes(self.pipeline, LogitsIndex(ROBOFLOW_LOGITS),
                                                self.pipeline.store.disabled_reason is None)

    @bentoml.api
    @answers_request_errors
    def segment(
        self,
        ctx: bentoml.Context,
        image: OptionalImage,
        mask_input: OptionalMaskInput,
        points: PointsField = None,
        labels: LabelsField = None,
        box: BoxField = None,
        multimask_output: MultimaskField = None,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
        previous_mask_id: PreviousMaskIdField = None,
        candidates: CandidatesField = None,
        formats: FormatsField = None,
        polygon_tolerance: PolygonToleranceField = None,
        model: ModelField = None,
        steps: StepsField = None,
    ) -> SegmentResponse:
        """Segment one object from clicks and/or a box; the PNG mask goes to S3, its URL comes back.

        Give the image as `image` (a file), `image_url` (s3://… or https://…) or, for an image sent
        before, just its `image_id`. To refine the mask with another click, send all clicks so far
        and the `mask_id` of the last answer as `previous_mask_id`, or the earlier clicks as `steps`
        (the whole chain in one request). Errors, each with
        `{"error": "<what is wrong>"}`: 400 bad prompt, image or field, a `model` not served here, or a
        `previous_mask_id` of another image or model; 401 missing/wrong API key (when keys are configured); 403 an `image_url`
        this service may not read; 404 an unknown `image_id` sent alone, or an unknown (evicted)
        `previous_mask_id`; 408 body too slow; 413 upload or image too large; 415 not an image;
        429 too many requests in flight.
        """
        prompt = Prompt.parse(points=points, labels=labels, box=box, multimask_output=multimask_output,
                              previous_mask_id=previous_mask_id, candidates=candidates)
        steps = parse_steps(steps, prompt, with_mask_input=mask_input is not None)
        formats, polygon_tolerance = parse_formats(formats, FORMATS), parse_polygon_tolerance(polygon_tolerance)
        model = SETTINGS.model_for(model)
        with timed(ctx) as timer:
            request = image_request(image, image_id, image_url, timer)
            mask_files = None if mask_input is None else [mask_input.read_bytes()]
            result = self.pipeline.run(request, [prompt], timer, tenant_of(ctx), mask_files, formats, polygon_tolerance,
                                       model, steps)
        say_cache(ctx, result.cached)
        return SegmentResponse(**result.masks[0].response_fields(), width=result.width, height=result.height)

    @bentoml.api
    @answers_request_errors
    def segment_objects(
        self,
        ctx: bentoml.Context,
        image: OptionalImage,
        objects: ObjectsField = None,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
        formats: FormatsField = None,
        polygon_tolerance: PolygonToleranceField = None,
        model: ModelField = None,
    ) -> ObjectsResponse:
        """Segment several objects in one image, one prompt each: one encoder pass, one mask each.

        `objects` is a list of prompts with the fields of /segment (`previous_mask_id` and
        `candidates` included); the response lists the masks in the same order. Errors as for /segment.
        """
        prompts = parse_objects(objects)
        formats, polygon_tolerance = parse_formats(formats, FORMATS), parse_polygon_tolerance(polygon_tolerance)
        model = SETTINGS.model_for(model)
        with timed(ctx) as timer:
            request = image_request(image, image_id, image_url, timer)
            result = self.pipeline.run(request, prompts, timer, tenant_of(ctx), None, formats, polygon_tolerance, model)
        say_cache(ctx, result.cached)
        return ObjectsResponse(objects=[ObjectMask(**m.response_fields()) for m in result.masks],
                               width=result.width, height=result.height)

    @bentoml.api
    @answers_request_errors
    def segment_everything(
        self,
        ctx: bentoml.Context,
        image: OptionalImage,
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
        model: ModelField = None,
    ) -> EverythingResponse:
        """Segment every object in the image (Meta's automatic mask generator): each object's PNG mask
        and one 16-bit label map go to S3; objects come largest first.

        The image as for /segment; the generator's parameters with Meta's names and defaults. Bounds:
        400 when the points or crop layers are too many for the image (the message names the limit),
        503 when the request would run past SAM2_EVERYTHING_DEADLINE_S (the message says what to
        reduce). Other errors as for /segment.
        """
        params = parse_params(
            points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio, crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area, use_m2m=use_m2m, multimask_output=multimask_output,
            max_objects=max_objects,
        )
        output = parse_output(formats, polygon_tolerance, per_object_masks)
        model = SETTINGS.model_for(model)
        with timed(ctx) as timer:
            request = image_request(image, image_id, image_url, timer)
            result = segment_everything(self.pipeline, request, params, output, timer, tenant_of(ctx),
                                        SETTINGS.sam2_everything_deadline_s, model)
        say_cache(ctx, result.cached)
        return EverythingResponse.of(result)

    @bentoml.api(route=browser.EMBED_ROUTE)
    @answers_request_errors
    def embed(
        self,
        ctx: bentoml.Context,
        image: OptionalImage,
        image_id: ImageIdField = None,
        image_url: ImageUrlField = None,
        dtype: browser.DtypeField = None,
        model: ModelField = None,
    ) -> bytes:
        """The image's embedding, for decoding clicks in the browser with GET /decoder.onnx: one `.npz`.

        The image as for /segment (the same cache: an image sent to either is encoded once). The
        file holds `image_embeddings` (1×256×64×64), `image_features_0` (1×32×256×256),
        `image_features_1` (1×64×128×128), in float16 unless `dtype` is `float32`, and
        `original_image_size` ([H, W] of the upright image, int32): the ONNX decoder's inputs by
        name. About 8.4 MB (float16). `ETag` and `If-None-Match` (304) as for any file. Errors as for /segment.
        """
        dtype = browser.parse_dtype(dtype)
        model = SETTINGS.model_for(model)
        with timed(ctx) as timer:
            request = image_request(image, image_id, image_url, timer)
            result = browser.embed(self.pipeline, request, dtype, timer, tenant_of(ctx), model)
        say_cache(ctx, result.cached)
        headers = {"ETag": result.etag, "Cache-Control": browser.EMBED_CACHE_CONTROL, CACHE_HEADER: ctx.response.headers[CACHE_HEADER],
                   "Server-Timing": ctx.response.headers["Server-Timing"]}
        if browser.not_modified(ctx.request.headers.get("if-none-match"), result.etag):
            ctx.response.status_code = 304  # BentoML sets the context's status on the response it returns
            return Response(status_code=304, headers=headers)
        return Response(result.body, media_type=browser.NPZ_TYPE, headers=headers)

    @bentoml.api(route=cvat.ROUTE)
    @answers_request_errors
    def cvat_interactor(
        self,
        ctx: bentoml.Context,
        image: cvat.ImageField = None,
        pos_points: cvat.PosPointsField = None,
        neg_points: cvat.NegPointsField = None,
        obj_bbox: cvat.ObjBboxField = None,
        model: ModelField = None,
    ) -> cvat.CvatResponse:
        """CVAT's interactor call (a JSON body as CVAT's lambda manager sends it), served by /segment.

        The frame comes as base64 in `image`; `pos_points` are clicks on the object, `neg_points` on
        the background, `obj_bbox` an optional box. The answer is what CVAT reads: `mask`, the rows of
        the mask within `bounds` ([xtl, ytl, xbr, ybr], inclusive), and `mask_url` when S3 is
        configured. deploy/cvat/ holds the nuclio function that forwards CVAT's calls here (docs/CVAT.md).
        Errors as for /segment.
        """
        model = SETTINGS.model_for(model)
        with timed(ctx) as timer:
            with timer.stage("read"):
                request = cvat.parse_request(image, pos_points, neg_points, obj_bbox, SETTINGS.sam2_max_upload_bytes)
            result = self.pipeline.run(ImageRequest(upload=request.image), [request.prompt], timer, tenant_of(ctx),
                                       None, cvat.FORMATS, model=model)
            with timer.stage("cvat_answer"):
                body = cvat.response_body(result, self.pipeline.max_response_bytes)
        say_cache(ctx, result.cached)
        return Response(body, media_type="application/json")

    @bentoml.api(route=labelstudio.PREDICT_ROUTE)
    @answers_request_errors
    def labelstudio_predict(
        self,
        ctx: bentoml.Context,
        tasks: labelstudio.TasksField = None,
        label_config: labelstudio.LabelConfigField = None,
        params: labelstudio.ParamsField = None,
        project: labelstudio.ProjectField = None,
        model_version: labelstudio.ModelVersionField = None,
    ) -> labelstudio.PredictResponse:
        """Label Studio's ML backend: a click (smart keypoints, a smart rectangle) on a task, served by /segment.

        Add `http://<this host>:3000/labelstudio` as the model in Label Studio (docs/LABEL_STUDIO.md). The
        answer is one prediction whose regions are the mask in Label Studio's brush RLE (`brushlabels`) and/or
        as a PNG data URL (`bitmasklabels`), as the config's mask tags ask. With API keys, Label Studio sends the
        key as the basic-auth password. Errors as for /segment.
        """
        with timed(ctx) as timer:
            body, result = self.labelstudio.predict(tasks, label_config, params, timer, tenant_of(ctx))
        if result is not None:
            say_cache(ctx, result.cached)
        return Response(body, media_type="application/json")

    @bentoml.api(route=labelstudio.SETUP_ROUTE)
    @answers_request_errors
    def labelstudio_setup(
        self,
        ctx: bentoml.Context,
        schema: labelstudio.SchemaField = None,
        project: labelstudio.ProjectField = None,
        hostname: labelstudio.UnusedField = None,
        access_token: labelstudio.UnusedField = None,
        extra_params: labelstudio.UnusedField = None,
        model_version: labelstudio.ModelVersionField = None,
    ) -> labelstudio.SetupResponse:
        """Label Studio's check when the model is added: the labelling config must have an image, a mask tag and
        a click or box tag (400 says what is missing); the answer names the model version."""
        return Response(self.labelstudio.setup(schema), media_type="application/json")

    @bentoml.api(route=labelstudio.WEBHOOK_ROUTE)
    @answers_request_errors
    def labelstudio_webhook(
        self, ctx: bentoml.Context, action: labelstudio.ActionField = None, project: labelstudio.UnusedField = None,
    ) -> labelstudio.WebhookResponse:
        """The events Label Studio sends to every model's webhook: acknowledged, not acted on (SAM 2 is not
        trained here). Open without an API key, as Label Studio's webhooks carry none; 1 MiB at most."""
        return Response(self.labelstudio.webhook(action), media_type="application/json")

    @bentoml.api(route=roboflow.EMBED_ROUTE)
    @answers_request_errors(with_message=True)
    def sam2_embed_image(
        self,
        ctx: bentoml.Context,
        image: roboflow.ImageField = None,
        image_id: roboflow.ImageIdField = None,
        sam2_version_id: roboflow.VersionField = None,
        api_key: roboflow.ApiKeyField = None,  # checked by RequestGuard before the body reaches here
    ) -> roboflow.EmbedResponse:
        """Roboflow's SAM 2 embed call (inference-sdk, roboflow/inference): cache the image's embedding.

        Answers `{"image_id", "time"}`: the id to send alone to /sam2/segment_image (without `image_id`,
        the SHA-256 of the image's bytes). docs/ROBOFLOW.md. Errors as for /segment.
        """
        model = roboflow.model_of_version(sam2_version_id, SETTINGS.model_for)
        with timed(ctx) as timer:
            with timer.stage("read"):
                image = roboflow.parse_image(image, image_id, SETTINGS.sam2_max_upload_bytes, self.pipeline.sources)
            body, cached = self.roboflow.embed(image, timer, tenant_of(ctx), model)
        say_cache(ctx, cached)
        return body

    @bentoml.api(route=roboflow.SEGMENT_ROUTE)
    @answers_request_errors(with_message=True)
    def sam2_segment_image(
        self,
        ctx: bentoml.Context,
        image: roboflow.ImageField = None,
        image_id: roboflow.ImageIdField = None,
        prompts: roboflow.PromptsField = None,
        multimask_output: roboflow.MultimaskField = None,
        format: roboflow.FormatField = None,
        save_logits_to_cache: roboflow.SaveLogitsField = None,
        load_logits_from_cache: roboflow.LoadLogitsField = None,
        mask_input: roboflow.MaskInputField = None,
        sam2_version_id: roboflow.VersionField = None,
        api_key: roboflow.ApiKeyField = None,  # checked by RequestGuard before the body reaches here
    ) -> roboflow.SegmentResponse:
        """Roboflow's SAM 2 segment call (inference-sdk's `sam2_segment_image`), served by /segment.

        One prediction per prompt: `{"predictions": [{"masks", "confidence", "format", "mask_url"}], "time"}`,
        `masks` polygons (`format` json) or COCO RLE (rle). A box's x, y are its centre. docs/ROBOFLOW.md.
        Errors as for /segment.
        """
        model = roboflow.model_of_version(sam2_version_id, SETTINGS.model_for)
        with timed(ctx) as timer:
            with timer.stage("read"):
                image = roboflow.parse_image(image, image_id, SETTINGS.sam2_max_upload_bytes, self.pipeline.sources)
            request = roboflow.parse_segment(image, prompts, multimask_output, format, save_logits_to_cache,
                                             load_logits_from_cache, mask_input)
            body, cached = self.roboflow.segment(request, timer, tenant_of(ctx), model)
        say_cache(ctx, cached)
        return Response(body, media_type="application/json")

    @bentoml.task
    @answers_request_errors
    def track(
        self,
        ctx: bentoml.Context,
        video: OptionalVideo,
        objects: TrackObjectsField = None,
        video_url: VideoUrlField = None,
        start_frame_index: StartFrameField = None,
        max_frames: MaxFramesField = None,
        reverse: ReverseField = None,
        formats: TrackFormatsField = None,
        model: ModelField = None,
    ) -> TrackResponse:
        """Track objects through a video clip, as a task: POST /track/submit returns a task id at once;
        GET /track/status?task_id=… says how far it is, GET /track/get?task_id=… gives the result (the
        manifest of PNG masks per frame and object, and a preview MP4, on S3), PUT /track/cancel?task_id=…
        stops it.

        `objects`: one entry per object, a prompt with its `frame_index` (or `prompts`, several on
        different frames). Errors, in the result, each with `{"error": ...}`: 400 bad field, prompt or
        frame_index (outside the clip or the frames tracked); 403 a `video_url` this service may not
        read; 409 canceled; 413 clip too large or too long; 415 not a video; 503 no S3 or no model service.
        """
        task_id = getattr(ctx.request.state, "task_id", None) or uuid.uuid4().hex  # None: called as POST /track
        request = TrackRequest.parse(video.read_bytes() if video else None, video_url, objects, start_frame_index,
                                     max_frames, reverse, formats, SETTINGS.model_for(model))
        # the caller's key: TaskProgress lets only a task's owner retry it, so it is the owner's too
        return self.tracks.run(task_id, request, tenant_of(ctx))


# Only the API service may call the model service: its token is checked before a body is read.
SAM2Model.add_asgi_middleware(HopGuard, token=SETTINGS.internal_token)
# API keys and the upload size limit, checked before BentoML reads the body; health, metrics and
# the OpenAPI page stay open.
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths={api.route for api in SAM2API.apis.values()
           if not api.is_task and api.route not in (cvat.ROUTE, *roboflow.ROUTES)
           and not api.route.startswith(labelstudio.PREFIX)} | {browser.DECODER_PATH},
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=SETTINGS.sam2_max_upload_bytes,
    body_timeout_s=SETTINGS.sam2_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields={name for api in SAM2API.apis.values() for name in api.input_spec.multipart_fields},
)
# CVAT's interactor call: the same keys, but a JSON body that carries the image as base64 (its
# decoded size is checked against SAM2_MAX_UPLOAD_BYTES by the route itself), so the JSON body may be
# as large as that image in base64, and `image` is a text field there.
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths={cvat.ROUTE},
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=cvat.body_limit(SETTINGS.sam2_max_upload_bytes),
    max_json_body_bytes=cvat.body_limit(SETTINGS.sam2_max_upload_bytes),
    max_json_items=cvat.MAX_JSON_ITEMS,
    body_timeout_s=SETTINGS.sam2_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields=(),
    setting_names=("SAM2_MAX_UPLOAD_BYTES, in base64, with the points", "SAM2_BODY_TIMEOUT_S"),
)
# Label Studio's calls: the same keys, also as the password of basic auth (what Label Studio sends), and
# JSON bodies up to 16 MiB (or SAM2_MAX_UPLOAD_BYTES if less): a task comes with its annotations and
# predictions (brush RLEs). Its webhook is open (Label Studio's webhooks carry no credentials; the route
# does nothing), within 1 MiB.
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths={labelstudio.PREDICT_ROUTE, labelstudio.SETUP_ROUTE},
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=min(SETTINGS.sam2_max_upload_bytes, labelstudio.MAX_BODY_BYTES),
    max_json_body_bytes=min(SETTINGS.sam2_max_upload_bytes, labelstudio.MAX_BODY_BYTES),
    setting_names=("16 MiB for Label Studio's calls, or SAM2_MAX_UPLOAD_BYTES if less", "SAM2_BODY_TIMEOUT_S"),
    body_timeout_s=SETTINGS.sam2_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields=(),
    basic_auth=True,
)
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths={labelstudio.WEBHOOK_ROUTE},
    max_upload_bytes=SETTINGS.sam2_max_upload_bytes,
    body_timeout_s=SETTINGS.sam2_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields=(),
)
# Roboflow's SAM 2 routes: as CVAT's (the image in base64 JSON), and the key may also come as
# `?api_key=` or the body's `api_key`, as Roboflow's clients send it (these routes only).
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths=set(roboflow.ROUTES),
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=roboflow.body_limit(SETTINGS.sam2_max_upload_bytes),
    max_json_body_bytes=roboflow.body_limit(SETTINGS.sam2_max_upload_bytes),
    body_timeout_s=SETTINGS.sam2_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields=(),
    setting_names=("SAM2_MAX_UPLOAD_BYTES, in base64, with the prompts", "SAM2_BODY_TIMEOUT_S"),
    key_in_query_or_body=True,
    max_json_items=roboflow.MAX_JSON_ITEMS,
)
# The tracking task's routes (BentoML's submit, status, get, retry, cancel and the plain call): the
# same keys, with the clip's own size and time bounds; then progress and cancel (sam2_api.api.task_board).
TRACK_PATHS = {SAM2API.apis["track"].route + suffix for suffix in ("", "/submit", "/status", "/get", "/retry", "/cancel")}
SAM2API.add_asgi_middleware(
    RequestGuard,
    paths=TRACK_PATHS,
    api_keys=SETTINGS.api_keys,
    max_upload_bytes=SETTINGS.sam2_video_max_upload_bytes,
    body_timeout_s=SETTINGS.sam2_video_body_timeout_s,
    min_upload_bytes_per_s=SETTINGS.sam2_min_upload_bytes_per_s,
    file_fields={name for api in SAM2API.apis.values() for name in api.input_spec.multipart_fields},
    setting_names=("SAM2_VIDEO_MAX_UPLOAD_BYTES", "SAM2_VIDEO_BODY_TIMEOUT_S"),
)
# GET /decoder.onnx (the browser's decoder), inside the guard above: the same API keys.
SAM2API.add_asgi_middleware(browser.DecoderFile, source=DECODER_SOURCE, resolve=SETTINGS.model_for)
SAM2API.add_asgi_middleware(TaskProgress, route=SAM2API.apis["track"].route, board_path=TASK_BOARD)
# The OpenAPI document at /docs.json: valid, and about this service (BentoML's own is neither).
SAM2API.add_asgi_middleware(PublishedOpenAPI, spec=lambda: SAM2API.openapi_spec.asdict())
# /readyz answers within seconds, also while the model service loads or restarts.
SAM2API.add_asgi_middleware(BoundedReadiness)
label_metrics_by_route()  # before BentoML builds the app: /metrics labelled by route, not raw path
