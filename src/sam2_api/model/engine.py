"""The model service's side of a request: cached embeddings, the device thread, packed masks.

:meth:`Engine.predict` answers one call from the API service. With a cache key alone it serves
from the embedding cache or says ``needs_image``; with the decoded image too it encodes (once, even
when calls race for the same new image) and caches. Prompts are checked against the image's size
before any model work, then decoded on the device thread; masks leave as packed bits, each with
the ``mask_id`` of its low-resolution logits, which stay here for the next click to refine.

Every job goes to the device in its caller's :class:`Lane` (the key's tenant and the route), so
that the device thread takes turns between callers. :meth:`Engine.everything` refuses a request
that could not finish within its deadline, given the work queued before it, before computing it.

An engine serves one model size (its :class:`Segmenter`); several engines, one per size, share
one device thread and the caches (:mod:`sam2_api.model.model_set`), where their entries are kept
under keys that name the size (:func:`model_scoped`): an image encoded by one size is never
decoded by another, nor a mask's logits refined by another.
"""

from __future__ import annotations

import logging
import time

from .. import errors, maskinput
from .embedding_cache import EmbeddingCache
from ..config import MASK_CACHE_MAX_BYTES, MASK_INPUT_LOGIT
from .device_thread import DeviceThread, Lane
from .mask_generator import Deadline, Pace, has_hole_filling, segment_everything
from ..messages import EverythingLimits, EverythingParams, EverythingReply, Plan, default_points_per_batch
from .logit_cache import LogitCache
from ..prompts import Prompt
from ..messages import (
    CACHE_KEY, MAX_PROMPTS, Failure, ImageLimits, LowResMask, MaskBits, ModelReply, RawImage, tenant_of,
)
from .segmenter import Embedding, Mask, Segmenter
from .decoder_export import embedding_arrays
from ..messages_browser import EmbedDtype, EmbedReply
from ..timing import StageTimer

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, device: DeviceThread, cache: EmbeddingCache, logits: LogitCache | None = None,
                 mask_input_logit: float = MASK_INPUT_LOGIT,
                 everything_limits: EverythingLimits = EverythingLimits(),
                 image_limits: ImageLimits = ImageLimits(), segmenter: Segmenter | None = None) -> None:
        self.device = device
        self.segmenter = segmenter or device.segmenter  # the model size this engine serves
        self.image_limits = image_limits
        self.cache = cache
        self.logits = logits if logits is not None else LogitCache(MASK_CACHE_MAX_BYTES)
        self.mask_input_logit = mask_input_logit
        self.everything_limits = everything_limits
        self.everything_pace = Pace()

    def predict(self, key: str, prompts: list[Prompt], image: RawImage | None = None,
                mask_inputs: list[LowResMask | None] | None = None) -> ModelReply:
        """The best mask per prompt for the image cached as ``key``, or given as ``image``.

        A prompt's ``previous_mask_id`` (logits kept here) or else its entry in ``mask_inputs`` (a
        mask file) becomes its ``mask_input`` (the API service refuses requests with both).
        """
        timer = StageTimer()
        try:
            self._check_call(key, prompts, image)
            key = model_scoped(key, self.segmenter.name)
            previous = self._mask_inputs(key, prompts, mask_inputs)  # an unknown id fails before any encoding
            lane = Lane(tenant_of(key), "segment")
            embedding, cached = self._embedding(key, image, prompts, timer, lane)
            if embedding is None:
                return ModelReply(needs_image=True)
            height, width = embedding.orig_hw
            _check_fits(prompts, width, height)
            masks = self.device.decode(embedding, prompts, timer, previous, lane, self.segmenter)
        except errors.RequestError as exc:
            return ModelReply(failure=Failure.of(exc), seconds=timer.seconds)
        return ModelReply(
            masks=[self._reply(key, mask) for mask in masks],
            width=width, height=height, cached=cached, seconds=timer.seconds,
        )

    def embed(self, key: str, image: RawImage | None = None, dtype: EmbedDtype = "float16") -> EmbedReply:
        """The embedding of the image cached as ``key``, or given as ``image`` (encoded and cached
        now), as the browser decoder's inputs (``POST /embed``)."""
        timer = StageTimer()
        try:
            self._check_call(key, [], image)
            key = model_scoped(key, self.segmenter.name)
            embedding, cached = self._embedding(key, image, [], timer, Lane(tenant_of(key), "embed"))
            if embedding is None:
                return EmbedReply(needs_image=True)
            with timer.stage("embed_arrays"):
                arrays = embedding_arrays(embedding.image_embed, embedding.high_res_feats, dtype)
        except errors.RequestError as exc:
            return EmbedReply(failure=Failure.of(exc), seconds=timer.seconds)
        height, width = embedding.orig_hw
        return EmbedReply(arrays=arrays, width=width, height=height, cached=cached, seconds=timer.seconds)

    def _check_call(self, key: str, prompts: list[Prompt], image: RawImage | None) -> None:
        """The bounds the API service has checked, checked again: this service trusts no caller with
        them (sam2_api.server.hop). A failure means a caller that is not our API service, or one that was
        given other limits. Each prompt was checked as it was deserialized (``Prompt``'s validators)."""
        if not CACHE_KEY.fullmatch(key):
            raise errors.InvalidField("the cache key is malformed")
        if len(prompts) > MAX_PROMPTS:
            raise errors.InvalidPrompt(f"{len(prompts)} prompts in one call; the limit is {MAX_PROMPTS}")
        if image is not None:
            self.image_limits.check(image.width, image.height)

    def _mask_inputs(self, key: str, prompts: list[Prompt], files: list[LowResMask | None] | None) -> list:
        files = files if files is not None else [None] * len(prompts)
        if len(files) != len(prompts):
            raise ValueError(f"{len(files)} mask inputs for {len(prompts)} prompts")  # a caller's bug, not a request's
        inputs = []
        for prompt, file in zip(prompts, files):
            if prompt.previous_mask_id is not None:
                inputs.append(self.logits.get(prompt.previous_mask_id, key))
            elif file is not None:
                inputs.append(maskinput.logits(file, self.mask_input_logit))
            else:
                inputs.append(None)
        return inputs

    def _reply(self, key: str, mask: Mask) -> MaskBits:
        return MaskBits(bits=mask.bits, score=mask.score, mask_id=self.logits.put(key, mask.logits),
                        others=[self._reply(key, other) for other in mask.others])

    def everything(self, key: str, params: EverythingParams, image: RawImage | None = None,
                   deadline_s: float | None = None) -> EverythingReply:
        """Every object in the image cached as ``key``, or given as ``image`` (always needed with
        crops, which are encoded from its pixels; the whole image's embedding comes from the cache).
        ``deadline_s``: what the caller has left of the request's deadline, if less than the limit's."""
        timer = StageTimer()
        limits = self.everything_limits
        seconds = limits.deadline_s if deadline_s is None else min(limits.deadline_s, deadline_s)
        deadline_at = time.monotonic() + seconds
        lane = Lane(tenant_of(key), "everything")
        try:
            self._check_call(key, [], image)
            key = model_scoped(key, self.segmenter.name)
            pixels = None
            if image is None:
                embedding, cached = self.cache.get(key), True
                if embedding is None or params.needs_pixels:
                    return EverythingReply(needs_image=True)
                plan = self._everything_plan(params, embedding.orig_hw[1], embedding.orig_hw[0])
                deadline = self._everything_deadline(deadline_at, params, plan, lane, encode=False)
            else:
                plan = self._everything_plan(params, image.width, image.height)  # before the encoder, not after
                deadline = self._everything_deadline(deadline_at, params, plan, lane, encode=key not in self.cache)
                pixels = image.pixels
                embedding, cached = self.cache.get_or_compute(key, lambda: self._encode(pixels, timer, lane))
            height, width = embedding.orig_hw
            crops_from = pixels if params.needs_pixels else None

            def run() -> tuple[list, int]:
                deadline.expected_s = self._everything_seconds(params, plan)  # as measured while it waited
                return segment_everything(self.segmenter, embedding, crops_from, params, plan, deadline,
                                          self.device.checkpoint)

            objects, found = self.device.call(run, "everything", timer, lane, long=True,
                                              expected_s=deadline.expected_s, segmenter=self.segmenter)
        except errors.RequestError as exc:
            return EverythingReply(failure=Failure.of(exc), seconds=timer.seconds)
        return EverythingReply(objects=objects, found=found, width=width, height=height, cached=cached,
                               seconds=timer.seconds)

    def _everything_deadline(self, at: float, params: EverythingParams, plan: Plan, lane: Lane,
                             encode: bool) -> Deadline:
        """The request's deadline, once it is known to be reachable: the work queued for the device
        before it, then its own (an encoder pass if ``encode``, and ``plan``, stretched by other
        callers' jobs between its batches), as measured so far."""
        deadline = Deadline(at, self.everything_limits.deadline_s, params, plan,
                            self._everything_seconds(params, plan), self.everything_pace)
        deadline.check_start(self.device.seconds_ahead(lane), self.device.typical_s("encoder", self.segmenter) if encode else 0.0)
        return deadline

    def _everything_seconds(self, params: EverythingParams, plan: Plan) -> float:
        """The expected device time of ``plan``: at the pace measured so far, stretched by the
        other callers' jobs that run between batches lately."""
        encoder_s = self.device.typical_s("encoder", self.segmenter)
        return self.everything_pace.seconds(params, plan, encoder_s) * (1 + self.device.stretch())

    def _everything_plan(self, params: EverythingParams, width: int, height: int) -> Plan:
        if params.min_mask_region_area and not has_hole_filling(self.segmenter.device):
            raise errors.InvalidField(
                "`min_mask_region_area` needs sam2's compiled CUDA extension (sam2._C), which this server "
                "does not have (Meta's generator skips it there too); leave it at 0"
            )
        return params.plan(width, height, self.everything_limits,
                           default_points_per_batch(self.segmenter.device.type))

    def _embedding(self, key: str, image: RawImage | None, prompts: list[Prompt],
                   timer: StageTimer, lane: Lane) -> tuple[Embedding | None, bool]:
        if image is None:
            return self.cache.get(key), True
        _check_fits(prompts, image.width, image.height)  # before the encoder, not after
        return self.cache.get_or_compute(key, lambda: self._encode(image.pixels, timer, lane))

    def _encode(self, pixels, timer: StageTimer, lane: Lane) -> Embedding:
        return self.device.encode(pixels, timer, lane, self.segmenter)


def model_scoped(key: str, model: str) -> str:
    """The caches' key of image ``key`` for model size ``model`` (a short name, without "/"; unchanged for
    an unnamed model): after the tenant (:func:`sam2_api.messages.tenant_of` still finds it), never a
    valid key itself ("@" is in no image key)."""
    assert "/" not in model, model
    return f"{key}@{model}" if model else key


def _check_fits(prompts: list[Prompt], width: int, height: int) -> None:
    for prompt in prompts:
        prompt.check_fits(width, height)
