"""The model service's side of a request: cached embeddings, the device thread, packed masks.

:meth:`Engine.predict` answers one call from the API service. With a cache key alone it serves
from the embedding cache or says ``needs_image``; with the decoded image too it encodes (once, even
when calls race for the same new image) and caches. Prompts are checked against the image's size
before any model work, then decoded on the device thread; masks leave as packed bits.
"""

from __future__ import annotations

import logging
import time

from . import errors
from .cache import EmbeddingCache
from .config import Settings
from .device import DeviceThread
from .everything import Deadline, has_hole_filling, segment_everything
from .everything_protocol import EverythingLimits, EverythingParams, EverythingReply, Plan
from .model import WeightsSource, load_sam2, pick_device, resolve_weights
from .prompts import Prompt
from .protocol import Failure, MaskBits, ModelReply, RawImage
from .segmenter import Embedding, Segmenter
from .timing import StageTimer

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, device: DeviceThread, cache: EmbeddingCache,
                 everything_limits: EverythingLimits = EverythingLimits()) -> None:
        self.device = device
        self.cache = cache
        self.everything_limits = everything_limits

    def predict(self, key: str, prompts: list[Prompt], image: RawImage | None = None) -> ModelReply:
        """One mask per prompt for the image cached as ``key``, or given as ``image``."""
        timer = StageTimer()
        try:
            embedding, cached = self._embedding(key, image, prompts, timer)
            if embedding is None:
                return ModelReply(needs_image=True)
            height, width = embedding.orig_hw
            _check_fits(prompts, width, height)
            masks = self.device.decode(embedding, prompts, timer)
        except errors.RequestError as exc:
            return ModelReply(failure=Failure.of(exc), seconds=timer.seconds)
        return ModelReply(
            masks=[MaskBits(bits=m.bits, score=m.score) for m in masks],
            width=width, height=height, cached=cached, seconds=timer.seconds,
        )

    def everything(self, key: str, params: EverythingParams, image: RawImage | None = None) -> EverythingReply:
        """Every object in the image cached as ``key``, or given as ``image`` (always needed with
        crops, which are encoded from its pixels; the whole image's embedding comes from the cache)."""
        timer = StageTimer()
        limits = self.everything_limits
        deadline_at = time.monotonic() + limits.deadline_s
        try:
            pixels = None
            if image is None:
                embedding, cached = self.cache.get(key), True
                if embedding is None or params.needs_pixels:
                    return EverythingReply(needs_image=True)
            else:
                self._everything_plan(params, image.width, image.height)  # before the encoder, not after
                pixels = image.array()
                embedding, cached = self.cache.get_or_compute(key, lambda: self.device.encode(pixels, timer))
            height, width = embedding.orig_hw
            plan = self._everything_plan(params, width, height)
            deadline = Deadline(deadline_at, limits.deadline_s, params, plan)
            crops_from = pixels if params.needs_pixels else None
            objects, found = self.device.call(
                lambda: segment_everything(self.device.segmenter, embedding, crops_from, params, plan, deadline),
                "everything", timer,
            )
        except errors.RequestError as exc:
            return EverythingReply(failure=Failure.of(exc), seconds=timer.seconds)
        return EverythingReply(objects=objects, found=found, width=width, height=height, cached=cached,
                               seconds=timer.seconds)

    def _everything_plan(self, params: EverythingParams, width: int, height: int) -> Plan:
        if params.min_mask_region_area and not has_hole_filling(self.device.segmenter.device):
            raise errors.InvalidField(
                "`min_mask_region_area` needs sam2's compiled CUDA extension (sam2._C), which this server "
                "does not have (Meta's generator skips it there too); leave it at 0"
            )
        return params.plan(width, height, self.everything_limits)

    def _embedding(self, key: str, image: RawImage | None, prompts: list[Prompt],
                   timer: StageTimer) -> tuple[Embedding | None, bool]:
        if image is None:
            return self.cache.get(key), True
        _check_fits(prompts, image.width, image.height)  # before the encoder, not after
        return self.cache.get_or_compute(key, lambda: self.device.encode(image.array(), timer))


def _check_fits(prompts: list[Prompt], width: int, height: int) -> None:
    for prompt in prompts:
        prompt.check_fits(width, height)


def build_engine(settings: Settings, packaged: WeightsSource | None = None) -> Engine:
    """The model on its device, warmed up on the device thread, with an empty embedding cache."""
    device = pick_device(settings.sam2_device)
    model = load_sam2(resolve_weights(settings, packaged, download=False), device, settings.sam2_compile)
    thread = DeviceThread(Segmenter(model), settings.sam2_encoder_batch, settings.sam2_encoder_batch_wait_ms / 1000)
    thread.warm_up()
    limits = EverythingLimits(settings.sam2_everything_deadline_s, settings.sam2_everything_max_points,
                              settings.sam2_everything_max_batch_bytes)
    return Engine(thread, EmbeddingCache(settings.sam2_cache_max_entries, settings.cache_max_bytes(device.type)),
                  limits)
