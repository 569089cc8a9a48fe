"""The model sizes one model service serves (``SAM2_MODELS``): loaded on first use, the least
recently used unloaded beyond a memory budget, all driven by one device thread.

Each size is an :class:`Engine` over its own :class:`Segmenter`; the engines share the device thread
(so its turns between callers hold across sizes) and the two caches, where each entry's key names
its size (:func:`sam2_api.model.engine.model_scoped`): an ``image_id`` or ``previous_mask_id`` made
with one size is unknown to another. The default size (``SAM2_MODEL``) is loaded and warmed up at
start-up and never unloaded: the device thread and the server's readiness are its. Another size is
loaded by the first request that names it (that request waits for the load and a warm-up; others go
on meanwhile), and unloaded, least recently used first, when the loaded sizes' weights pass
``SAM2_MODELS_MAX_BYTES``; a request that still holds an unloaded size finishes on it, and its memory
goes when that request does. A size loaded again has the same weights, so nothing cached is stale.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

from .. import errors
from ..config import Settings
from ..messages import EverythingParams, EverythingReply, Failure, LowResMask, ModelReply, RawImage
from ..messages_browser import EmbedDtype, EmbedReply
from ..sizes import served_model, short_name
from ..prompts import Prompt

log = logging.getLogger(__name__)


class ServedModel:
    """One loaded size: its engine (with its segmenter), its sam2 config, its weights' bytes on the
    device, and SAM 2's video predictor over the same weights, built on first use."""

    def __init__(self, model_id: str, engine, config: str, checkpoint=None, decoder=None) -> None:
        self.model_id = model_id
        self.engine = engine
        self.config = config
        self.checkpoint = checkpoint  # the weights' file, whose digest names the browser decoder's disk cache
        self.decoder = decoder  # the browser's ONNX decoder the Bento carries for these weights, if any
        model = engine.segmenter.model
        self.nbytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        self._video = None
        self._video_lock = threading.Lock()

    def video_model(self, overrides: tuple[str, ...] = ()):
        """SAM 2's video predictor on this size's weights (built once, on the device thread)."""
        from .video_session import build_video_model

        with self._video_lock:
            if self._video is None:
                image_model = self.engine.segmenter.model
                self._video = self.engine.device.call(
                    lambda: build_video_model(self.config, image_model, overrides), "video_model",
                    segmenter=self.engine.segmenter)
                log.info("built SAM 2's video predictor (%s) on %s's weights", self.config, self.model_id)
            return self._video


class ModelSet:
    """The served sizes by id; :meth:`get` loads one when first asked for. Thread-safe."""

    def __init__(self, served: tuple[str, ...], default: ServedModel, load: Callable[[str], ServedModel],
                 max_bytes: int) -> None:
        self.served = served
        self.default = default
        self.max_bytes = max_bytes
        self._load = load
        self._loaded: OrderedDict[str, ServedModel] = OrderedDict({default.model_id: default})
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> tuple[str, ...]:
        """The loaded sizes' ids, least recently used first."""
        with self._lock:
            return tuple(self._loaded)

    @property
    def device_type(self) -> str:
        return self.default.engine.segmenter.device.type

    def get(self, name: str | None = None) -> ServedModel:
        """The size ``name`` names (any of its spellings; None: the default), loaded now if it is not;
        :class:`errors.InvalidField` naming the served ones when it is not served here."""
        model_id = served_model(name, self.served, self.default.model_id)
        with self._lock:
            if (found := self._used(model_id)) is not None:
                return found
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one load per size at a time; other sizes serve meanwhile
            with self._lock:
                if (found := self._used(model_id)) is not None:
                    return found
            try:
                found = self._load(model_id)
            except errors.ModelLoadError as exc:
                raise errors.ModelUnavailable(f"model {model_id} could not be loaded: {exc}") from exc
            with self._lock:
                self._loaded[model_id] = found
                self._evict()
            return found

    def _used(self, model_id: str) -> ServedModel | None:
        found = self._loaded.get(model_id)
        if found is not None:
            self._loaded.move_to_end(model_id)
        return found

    def _evict(self) -> None:
        """Unload the least recently used sizes, never the default nor the one just used, while the
        loaded weights pass the budget."""
        while sum(m.nbytes for m in self._loaded.values()) > self.max_bytes:
            newest = next(reversed(self._loaded))
            victim = next((m for m in self._loaded if m not in (self.default.model_id, newest)), None)
            if victim is None:
                return
            evicted = self._loaded.pop(victim)
            log.info("unloaded %s (%d MB of weights): the loaded sizes passed SAM2_MODELS_MAX_BYTES=%d",
                     victim, evicted.nbytes // 10**6, self.max_bytes)

    def predict(self, key: str, prompts: list[Prompt], image: RawImage | None = None,
                mask_inputs: list[LowResMask | None] | None = None, model: str | None = None) -> ModelReply:
        """:meth:`Engine.predict` on the size ``model`` names."""
        try:
            engine = self.get(model).engine
        except errors.RequestError as exc:
            return ModelReply(failure=Failure.of(exc))
        return engine.predict(key, prompts, image, mask_inputs)

    def embed(self, key: str, image: RawImage | None = None, dtype: EmbedDtype = "float16",
              model: str | None = None) -> EmbedReply:
        """:meth:`Engine.embed` on the size ``model`` names."""
        try:
            engine = self.get(model).engine
        except errors.RequestError as exc:
            return EmbedReply(failure=Failure.of(exc))
        return engine.embed(key, image, dtype)

    def everything(self, key: str, params: EverythingParams, image: RawImage | None = None,
                   deadline_s: float | None = None, model: str | None = None) -> EverythingReply:
        """:meth:`Engine.everything` on the size ``model`` names."""
        try:
            engine = self.get(model).engine
        except errors.RequestError as exc:
            return EverythingReply(failure=Failure.of(exc))
        return engine.everything(key, params, image, deadline_s)


def build_models(settings: Settings, packaged: dict) -> ModelSet:
    """The served sizes on one device thread with shared, empty caches; the default size loaded and
    warmed up now. ``packaged``: the Bento's weights by size id (:func:`packaged_weights`)."""
    from ..messages import EverythingLimits, ImageLimits
    from .device_thread import DeviceThread
    from .embedding_cache import EmbeddingCache
    from .engine import Engine
    from .logit_cache import LogitCache
    from .segmenter import Segmenter
    from .weights import load_sam2, pick_device, resolve_weights

    device = pick_device(settings.sam2_device)
    cache = EmbeddingCache(settings.sam2_cache_max_entries, settings.cache_max_bytes(device.type))
    logits = LogitCache(settings.sam2_mask_cache_max_bytes)
    limits = EverythingLimits(settings.sam2_everything_deadline_s, settings.sam2_everything_max_points,
                              settings.sam2_everything_max_batch_bytes)
    image_limits = ImageLimits(settings.sam2_max_image_pixels, settings.sam2_max_image_side)
    thread: DeviceThread | None = None

    def load(model_id: str) -> ServedModel:
        nonlocal thread
        source = resolve_weights(settings, packaged.get(model_id), download=False, model=model_id)
        segmenter = Segmenter(load_sam2(source, device, settings.sam2_compile), name=short_name(model_id))
        if thread is None:  # the default size: the device thread's own
            thread = DeviceThread(segmenter, settings.sam2_encoder_batch, settings.sam2_encoder_batch_wait_ms / 1000)
            thread.warm_up()
        else:
            thread.call(segmenter.warm_up, "warm_up", segmenter=segmenter)
        engine = Engine(thread, cache, logits, settings.sam2_mask_input_logit, limits, image_limits, segmenter)
        return ServedModel(model_id, engine, source.config, source.checkpoint, source.decoder)

    return ModelSet(settings.served_models, load(settings.default_model), load, settings.sam2_models_max_bytes)
