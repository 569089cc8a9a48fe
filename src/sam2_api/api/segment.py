"""One request's path on the API service: image → cache key → model service → PNGs → S3 URLs.

The image is resolved once: its cache key comes from the request (``image_id``, or a SHA-256 of the
uploaded or fetched bytes; scoped to the caller's API key), and the model service is asked with the
key alone first. Only when it does not hold that embedding is the image decoded here (uploaded
bytes, or ``image_url`` fetched now) and sent along; that second call always succeeds, whatever
the cache evicted in between (a caller that needs the pixels anyway, segment everything with
crops, sends them at once). Decoding, PNG encoding and uploads run here, in the API service's
processes, never in the process that drives the GPU.

Every mask comes back with the ``mask_id`` of its logits in the model service (for the next
click's ``previous_mask_id``), its box and area, and the ``formats`` asked for (COCO RLE,
polygons), computed here from its bits; with ``candidates``, SAM 2's other masks too. The formats
are made first, within ``SAM2_MAX_RESPONSE_BYTES`` (:class:`sam2_api.maskformats.FormatBudget`),
so that a response too large is refused before any PNG is made or stored; with formats, the
prompts go to the model service in rounds (the first alone, then as many as the bytes left hold),
so that it is refused before the model has decoded every prompt, too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence, TypeVar

import httpx

from .. import imaging, maskformats, maskinput
from ..config import MASK_INPUT_MAX_BYTES, MASK_INPUT_MAX_PIXELS, MAX_RESPONSE_BYTES, Settings
from ..errors import InvalidField, InvalidImageSource, MissingImage, ModelUnavailable, UnknownImageId
from ..messages import EverythingParams, EverythingReply
from ..prompts import Prompt
from ..messages import LowResMask, ModelReply, RawImage, scoped_key
from .fields.segment import CANDIDATE_COUNT, Step
from .image_urls import ImageSources
from .storage import MaskStore, shared_s3_client
from ..timing import StageTimer

log = logging.getLogger(__name__)

STALE_CONNECTION_S = 1.0  # a reused connection the peer had closed fails within this
SMALLER_FORMATS = ("ask for fewer `formats` (polygons are the larger), a `polygon_tolerance` of 1-2 pixels "
                   "(a fraction of the vertices, each within that distance of the boundary)")


class Model(Protocol):
    """The model service as the API service sees it (``service.SAM2Model``, local or remote)."""

    def predict(self, key: str, prompts: list[Prompt], image: RawImage | None = None,
                mask_inputs: list[LowResMask | None] | None = None, model: str | None = None) -> ModelReply: ...

    def everything(self, key: str, params: EverythingParams, image: RawImage | None = None,
                   deadline_s: float | None = None, model: str | None = None) -> EverythingReply: ...


_Reply = TypeVar("_Reply", ModelReply, EverythingReply)


@dataclass(frozen=True)
class ImageRequest:
    """How a request gives its image: uploaded bytes or an ``image_url``, with or without the
    client's ``image_id``; or the ``image_id`` alone, of an image sent before."""

    upload: bytes | None = None
    url: str | None = None
    image_id: str | None = None


@dataclass(frozen=True)
class StoredMask:
    """One mask as the response shows it: ``details`` holds ``bbox`` and ``area``, and ``rle`` and
    ``polygons`` when asked for (:func:`sam2_api.maskformats.describe`); ``candidates``, when its
    prompt asked for them, SAM 2's masks for it best first (this one first)."""

    url: str | None
    score: float
    mask_id: str = ""
    details: dict = field(default_factory=dict)
    candidates: list["StoredMask"] = field(default_factory=list)
    url_error: str | None = None  # why ``url`` is None (:data:`sam2_api.api.storage.UPLOAD_ERRORS`)

    def response_fields(self) -> dict:
        """This mask as the response shows it (:class:`sam2_api.api.fields.segment.Mask`), candidates included."""
        fields = {"mask_url": self.url, "mask_error": self.url_error, "score": self.score, "mask_id": self.mask_id,
                  **self.details}
        if self.candidates:
            fields["candidates"] = [candidate.response_fields() for candidate in self.candidates]
        return fields


@dataclass(frozen=True)
class Result:
    masks: list[StoredMask]
    width: int
    height: int
    cached: bool  # the image encoder was skipped


@dataclass(frozen=True)
class _Located:
    key: str
    load: Callable[[], bytes] | None  # the encoded image, fetched on first call; None for an id alone


class Pipeline:
    def __init__(self, model: Model, store: MaskStore, sources: ImageSources, max_image_pixels: int,
                 max_image_side: int, mask_input_max_bytes: int = MASK_INPUT_MAX_BYTES,
                 mask_input_max_pixels: int = MASK_INPUT_MAX_PIXELS,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.model = model
        self.store = store
        self.sources = sources
        self.max_image_pixels = max_image_pixels
        self.max_image_side = max_image_side
        self.mask_input_max_bytes = mask_input_max_bytes
        self.mask_input_max_pixels = mask_input_max_pixels
        self.max_response_bytes = max_response_bytes

    def run(self, image: ImageRequest, prompts: list[Prompt], timer: StageTimer, tenant: str | None = None,
            mask_files: list[bytes | None] | None = None, formats: tuple[str, ...] = (),
            polygon_tolerance: float = 0.0, model: str | None = None, steps: Sequence[Step] = ()) -> Result:
        """Segment one object per prompt; ``tenant`` (the caller's API key id) scopes the caches;
        ``model``: the served size's id (``Settings.model_for``), None for the default.

        ``mask_files[i]``: prompt i's ``mask_input`` file, if any. ``formats`` and
        ``polygon_tolerance``: as :func:`sam2_api.maskformats.describe` takes them, within
        :attr:`max_response_bytes` (422 beyond). ``steps``: the earlier clicks that the one prompt
        refines (:meth:`_after_steps`).
        """
        mask_inputs = self._mask_inputs(prompts, mask_files, timer)
        located = self._locate(image, timer)  # once: an image_url without image_id is fetched to be hashed
        encoded = False  # by one of the steps
        if steps:
            prompts, encoded = self._after_steps(located, image, steps, prompts, timer, tenant, model)
        replies = self._masks_in_rounds(located, image, prompts, mask_inputs, formats, polygon_tolerance, timer,
                                        tenant, model)
        height, width = replies[0][0].height, replies[0][0].width

        def png(bits: bytes) -> Callable[[], bytes]:
            def make() -> bytes:
                with timer.stage("png"):
                    return imaging.mask_png(bits, height, width)
            return make

        # Each prompt's masks, best first: the best alone, or SAM 2's candidates.
        groups = [[best, *best.others] for reply, _ in replies for best in reply.masks]
        every = [mask for group in groups for mask in group]
        details = [described for _, round_details in replies for described in round_details]
        with timer.stage("store"):
            uploads = self.store.put_many([png(mask.bits) for mask in every])
        stored = iter(StoredMask(upload.url, mask.score, mask.mask_id, described, url_error=upload.error)
                      for mask, upload, described in zip(every, uploads, details))
        shown = [[next(stored) for _ in group] for group in groups]
        masks = [replace(group[0], candidates=group if prompt.candidates else [])
                 for prompt, group in zip(prompts, shown)]
        return Result(masks, width, height, all(reply.cached for reply, _ in replies) and not encoded)

    def _masks_in_rounds(self, located: _Located, image: ImageRequest, prompts: list[Prompt],
                         mask_inputs: list[LowResMask | None] | None, formats: tuple[str, ...],
                         polygon_tolerance: float, timer: StageTimer, tenant: str | None,
                         model: str | None) -> list[tuple[ModelReply, list[dict]]]:
        """The model service's masks for ``prompts`` and their details, in rounds that stop at the
        response bound: every prompt in one call when no ``formats`` are asked for (their size is
        then bounded by the count); else the first prompt alone, then as many of the rest as the
        bytes left would hold at the rate so far (typically all), and so on. A request whose formats
        pass :attr:`max_response_bytes` is refused (422) after at most one round more than fits,
        not after the model has decoded every prompt's masks."""
        per_prompt = [CANDIDATE_COUNT if prompt.candidates else 1 for prompt in prompts]  # candidates, or the best
        expected = sum(per_prompt)
        budget = maskformats.FormatBudget(
            self.max_response_bytes, expected,
            SMALLER_FORMATS + (", or fewer objects or candidates" if expected > 1 else ""))
        rounds: list[tuple[ModelReply, list[dict]]] = []
        start, size = 0, (1 if formats else len(prompts))
        while not rounds or start < len(prompts):
            asked = slice(start, start + size)
            reply = self._ask(located, image, lambda key, pixels, asked=asked: self.model.predict(
                key=key, prompts=prompts[asked], image=pixels,
                mask_inputs=mask_inputs[asked] if mask_inputs is not None else None, **sized(model)), timer, tenant)
            masks = [mask for best in reply.masks for mask in (best, *best.others)]
            with timer.stage("formats"):
                rounds.append((reply, [maskformats.describe(imaging.unpack_mask(mask.bits, reply.height, reply.width),
                                                            formats, polygon_tolerance, budget) for mask in masks]))
            start += size
            size = budget.groups_that_fit(per_prompt[start:])
        return rounds

    def _after_steps(self, located: _Located, image: ImageRequest, steps: Sequence[Step], prompts: list[Prompt],
                     timer: StageTimer, tenant: str | None, model: str | None) -> tuple[list[Prompt], bool]:
        """The one prompt refining the chosen mask of the last step, each step run in turn as its own
        request would be (the first as sent, each later one refining the chosen mask of the one
        before); nothing of theirs is stored. Also whether a step ran the image encoder."""
        (prompt,) = prompts
        previous, encoded = steps[0].prompt.previous_mask_id, False
        for step in steps:
            asked = [step.prompt.model_copy(update={"previous_mask_id": previous})]
            reply = self._ask(located, image, lambda key, pixels, asked=asked: self.model.predict(
                key=key, prompts=asked, image=pixels, **sized(model)), timer, tenant)
            best = reply.masks[0]
            previous, encoded = [best, *best.others][step.chosen].mask_id, encoded or not reply.cached
        return [prompt.model_copy(update={"previous_mask_id": previous})], encoded

    def _mask_inputs(self, prompts: list[Prompt], files: list[bytes | None] | None,
                     timer: StageTimer) -> list[LowResMask | None] | None:
        """The ``mask_input`` files in SAM 2's low-resolution frame, before anything else is done."""
        if files is None or all(file is None for file in files):
            return None
        inputs = []
        for prompt, file in zip(prompts, files, strict=True):
            if file is not None and prompt.previous_mask_id is not None:
                raise InvalidField("send `previous_mask_id` or `mask_input`, not both: the first names the "
                                   "logits of an earlier answer, the second is a mask file")
            if file is None:
                inputs.append(None)
                continue
            with timer.stage("mask_input"):
                inputs.append(maskinput.low_res_mask(file, self.mask_input_max_pixels, self.max_image_side,
                                                     self.mask_input_max_bytes))
        return inputs

    def ask(self, image: ImageRequest, call: Callable[[str, RawImage | None], _Reply], timer: StageTimer,
            tenant: str | None = None, send_image: bool = False) -> _Reply:
        """The model service's reply for the request's image: ``call(key, None)`` first, with the
        cache key alone, then ``call(key, pixels)`` if it needs the image (decoded here); right
        away with the pixels when ``send_image``. Raises the request error the reply carries."""
        return self._ask(self._locate(image, timer), image, call, timer, tenant, send_image)

    def _ask(self, located: _Located, image: ImageRequest, call: Callable[[str, RawImage | None], _Reply],
             timer: StageTimer, tenant: str | None = None, send_image: bool = False) -> _Reply:
        key = scoped_key(tenant, located.key)
        reply = None if send_image and located.load is not None else self._call(lambda: call(key, None), timer)
        if reply is None or reply.needs_image:
            if located.load is None:
                raise UnknownImageId(
                    f"image_id {image.image_id!r} is not cached here (never sent, sent for another `model`, or "
                    "evicted): send the image with it again"
                )
            data = located.load()
            with timer.stage("image_decode"):
                pixels = imaging.load_upright_rgb(data, self.max_image_pixels, self.max_image_side)
            reply = self._call(lambda: call(key, RawImage(pixels=pixels)), timer)
        if reply.failure is not None:
            raise reply.failure.error()
        return reply

    def _call(self, call: Callable[[], _Reply], timer: StageTimer) -> _Reply:
        """``call()`` to the model service; a 503 when it cannot be reached. A call that fails on
        its connection within ``STALE_CONNECTION_S`` is sent once more: a pooled keep-alive
        connection that the model service closed just as it was reused fails that way, before any
        work. A later failure may have left the work running there, and is not repeated."""
        with timer.stage("model_call"):
            for attempt in (1, 2):
                started = time.monotonic()
                try:
                    reply = call()
                    break
                except Exception as exc:
                    if not _unreachable(exc):
                        raise
                    if attempt == 1 and _stale_connection(exc) and time.monotonic() - started < STALE_CONNECTION_S:
                        log.info("a connection to the model service failed at once (%s); sending the call again",
                                 type(exc).__name__)
                        continue
                    log.warning("the model service is unreachable: %s", type(exc).__name__)
                    raise ModelUnavailable("the model service is not reachable right now; retry shortly") from exc
        timer.merge(reply.seconds)
        return reply

    def _locate(self, image: ImageRequest, timer: StageTimer) -> _Located:
        """The cache key and a loader of the encoded image; ``image_url`` is checked here, always,
        even when the loader is never called."""
        if image.upload is not None and image.url is not None:
            raise InvalidImageSource("send the image file or image_url, not both")
        fetch = self.sources.locate(image.url) if image.url is not None else None
        if fetch is not None:
            fetch = _timed(fetch, timer, "fetch")
        if image.image_id is not None:
            upload = image.upload
            return _Located(f"id:{image.image_id}", (lambda: upload) if upload is not None else fetch)
        data = image.upload
        if data is None:
            if fetch is None:
                raise MissingImage("send the image as `image` (a file) or `image_url`, or the `image_id` "
                                   "of an image sent before")
            data = fetch()  # no id: the key is the content's hash, so the content comes first
        return _Located("sha256:" + hashlib.sha256(data).hexdigest(), lambda: data)


def sized(model: str | None) -> dict:
    """The ``model`` argument of a model service call: left out for the default size, so that an
    :class:`Engine` (one size) serves as the model service in tests too."""
    return {} if model is None else {"model": model}


def _stale_connection(exc: Exception) -> bool:
    """Whether the call failed on its connection (refused, closed or reset under it) rather than
    timing out or being answered with an error. BentoML's client for a dependency is aiohttp's
    (``_bentoml_impl.client.proxy2``); httpx's are its other clients'."""
    import aiohttp

    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return False
    return isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, httpx.ConnectError,
                            httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))


def _unreachable(exc: Exception) -> bool:
    """Whether the model service could not take the call or finish its answer (down, restarting,
    killed mid-stream, overloaded), as BentoML's client reports it: a connection error, a body cut
    off (aiohttp's ``ClientPayloadError``), or the service's own 429/502/503/504. Its 401 too: it
    refused this service's SAM2_INTERNAL_TOKEN, which the operator must fix (logged as an error)."""
    import aiohttp
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, httpx.TransportError,
                        ConnectionError, TimeoutError)):
        return True
    status = int(getattr(exc, "error_code", 500)) if isinstance(exc, BentoMLException) else None
    if status == 401:
        log.error("the model service refused this service's SAM2_INTERNAL_TOKEN: give both services the same one")
    return status in (401, 429, 502, 503, 504)


def _timed(load: Callable[[], bytes], timer: StageTimer, stage: str) -> Callable[[], bytes]:
    def timed() -> bytes:
        with timer.stage(stage):
            return load()
    return timed


def build_pipeline(settings: Settings, model: Model) -> Pipeline:
    """The API service's side, wired from ``settings``: the process's S3 client serves both the mask
    store and ``image_url`` reads from S3."""
    s3 = shared_s3_client(settings.aws_region, settings.s3_endpoint_url)
    store = MaskStore(
        s3, settings.s3_bucket_name_staging, region=settings.aws_region, endpoint_url=settings.s3_endpoint_url,
        prefix=settings.s3_mask_prefix, acl=settings.s3_object_acl,
        presign_expires=settings.s3_presign_expires if settings.s3_url_mode == "presigned" else None,
        deadline=settings.s3_upload_deadline,
    )
    sources = ImageSources(s3, settings.input_buckets, settings.sam2_max_upload_bytes)
    return Pipeline(model, store, sources, settings.sam2_max_image_pixels, settings.sam2_max_image_side,
                    settings.sam2_mask_input_max_bytes, settings.sam2_mask_input_max_pixels,
                    settings.sam2_max_response_bytes)
