"""The model service re-checks what it is sent: it trusts no caller to have done it (sam2_api.server.hop)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.device_thread import DeviceThread
from sam2_api.model.engine import Engine
from sam2_api.messages import EverythingParams
from sam2_api.prompts import Prompt
from sam2_api.messages import ImageLimits, RawImage, scoped_key
from sam2_api.model.segmenter import Segmenter

TENANT = "0123456789abcdef"
KEY = scoped_key(TENANT, "sha256:" + "a" * 64)


class CountingSegmenter(Segmenter):
    """The real segmenter, counting its encoder passes."""

    encoded = 0

    def encode_batch(self, images):
        CountingSegmenter.encoded += len(images)
        return super().encode_batch(images)


@pytest.fixture(scope="module")
def engine(sam2_model) -> Engine:
    return Engine(DeviceThread(CountingSegmenter(sam2_model)), EmbeddingCache(4, 2**30),
                  image_limits=ImageLimits(max_pixels=1_000_000, max_side=2048))


def image(height: int, width: int) -> RawImage:
    return RawImage(pixels=np.zeros((height, width, 3), np.uint8))


@pytest.mark.parametrize("key", ["", "sha256:short", "id:", "../" + KEY, KEY + "/x", "ABCDEF0123456789/id:x",
                                 "id:a b", "sha256:" + "g" * 64, "id:" + "x" * 129])
def test_a_malformed_cache_key_is_refused_before_any_work(engine, key):
    before = CountingSegmenter.encoded
    reply = engine.predict(key, [Prompt(points=[[1, 1]])], image(8, 8))
    assert reply.failure is not None and (reply.failure.kind, reply.failure.message) == (
        "InvalidField", "the cache key is malformed")
    assert engine.everything(key, EverythingParams(points_per_side=1), image(8, 8)).failure.kind == "InvalidField"
    assert CountingSegmenter.encoded == before


@pytest.mark.parametrize("height, width", [(1, 50_000), (2049, 8), (1001, 1000)], ids=["thin", "side", "pixels"])
def test_an_image_over_the_limits_is_a_413_before_the_encoder(engine, height, width):
    before = CountingSegmenter.encoded
    for reply in (engine.predict(KEY, [Prompt(points=[[0, 0]])], image(height, width)),
                  engine.everything(KEY, EverythingParams(points_per_side=1), image(height, width))):
        assert reply.failure.kind == "ImageTooLarge" and f"{width}x{height}" in reply.failure.message
        assert reply.failure.error().status == 413
    assert CountingSegmenter.encoded == before


def test_more_prompts_than_a_request_may_send_are_refused(engine):
    reply = engine.predict(KEY, [Prompt(points=[[1, 1]])] * 33, image(8, 8))
    assert reply.failure.kind == "InvalidPrompt" and "33 prompts" in reply.failure.message


def test_what_fits_is_served(engine):
    for key in (KEY, "id:photo-1.png", scoped_key(TENANT, "id:a:b_c.d-e")):
        reply = engine.predict(key, [Prompt(points=[[4, 4]])] * 32, image(16, 16))
        assert reply.failure is None and len(reply.masks) == 32 and (reply.width, reply.height) == (16, 16)
