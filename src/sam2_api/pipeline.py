"""One request's path: bytes (uploaded or fetched) → embedding (cached) → masks → PNGs → URLs.

The model's work happens under the segmenter's lock; everything else here (hashing, decoding the
upload, PNG encoding, uploading) runs on the request's own thread, beside the next request's
model work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import imaging
from .cache import EmbeddingCache
from .errors import InvalidImageSource, MissingImage, UnknownImageId
from .prompts import Prompt
from .segmenter import Embedding, Segmenter
from .sources import ImageSources
from .storage import MaskStore


@dataclass(frozen=True)
class StoredMask:
    url: str | None
    score: float


@dataclass(frozen=True)
class Result:
    masks: list[StoredMask]
    width: int
    height: int
    cached: bool  # the image encoder was skipped


class Pipeline:
    def __init__(self, segmenter: Segmenter, cache: EmbeddingCache, store: MaskStore, sources: ImageSources,
                 max_image_pixels: int, encode: Callable[[np.ndarray], Embedding] | None = None):
        self.segmenter = segmenter
        self.cache = cache
        self.store = store
        self.sources = sources
        self.max_image_pixels = max_image_pixels
        self.encode = encode or segmenter.encode  # or an EncoderBatcher's, batching across requests

    def run(self, data: bytes | None, prompts: list[Prompt], image_id: str | None = None,
            image_url: str | None = None) -> Result:
        """Segment one object per prompt in the image given as ``data``, ``image_url`` and/or ``image_id``."""
        if image_url is not None:
            if data is not None:
                raise InvalidImageSource("send the image file or image_url, not both")
            if image_id is None or _id_key(image_id) not in self.cache:
                data = self.sources.fetch(image_url)
        embedding, cached = self._embedding(data, image_id)
        height, width = embedding.orig_hw
        for prompt in prompts:
            prompt.check_fits(width, height)
        masks = self.segmenter.decode_many(embedding, prompts)
        stored = [StoredMask(self.store.put(imaging.mask_to_png(m.pixels)), m.score) for m in masks]
        return Result(stored, width, height, cached)

    def _embedding(self, data: bytes | None, image_id: str | None) -> tuple[Embedding, bool]:
        if data is None and image_id is None:
            raise MissingImage("send the `image` file (or the `image_id` of an image sent before)")
        if image_id is not None:
            key = _id_key(image_id)
            if data is None:
                embedding = self.cache.get(key)
                if embedding is None:
                    raise UnknownImageId(
                        f"image_id {image_id!r} is not cached here (never sent, or evicted): "
                        "send the image with it again"
                    )
                return embedding, True
        else:
            key = "sha256:" + hashlib.sha256(data).hexdigest()

        def encode() -> Embedding:
            return self.encode(imaging.load_upright_rgb(data, self.max_image_pixels))

        return self.cache.get_or_compute(key, encode)


def _id_key(image_id: str) -> str:
    """Cache key of a client's image_id (content hashes are "sha256:…", so the two never meet)."""
    return f"id:{image_id}"
