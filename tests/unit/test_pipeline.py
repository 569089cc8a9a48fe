"""The API side of a request, in process: Pipeline over a real Engine (the test checkpoint on the
CPU) and moto's in-process S3. The masks must be SAM2ImagePredictor's; each request resolves its
image once; an evicted embedding is recomputed, never a 404; tenants never share embeddings."""

from __future__ import annotations

import io

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from sam2_api.cache import EmbeddingCache
from sam2_api.device import DeviceThread
from sam2_api.engine import Engine
from sam2_api.errors import InvalidImageSource, InvalidPrompt, MissingImage, UnknownImageId
from sam2_api.pipeline import ImageRequest, Pipeline
from sam2_api.prompts import Prompt
from sam2_api.segmenter import Segmenter
from sam2_api.sources import ImageSources
from sam2_api.storage import MaskStore, make_s3_client
from sam2_api.timing import StageTimer
from tests.conftest import upright_rgb

REGION = "us-east-1"


@pytest.fixture(scope="module")
def device(sam2_model) -> DeviceThread:
    return DeviceThread(Segmenter(sam2_model))


@pytest.fixture
def s3(monkeypatch, test_images):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket="masks")
        client.create_bucket(Bucket="photos")
        client.put_object(Bucket="photos", Key="cat.png", Body=(test_images / "chelsea.png").read_bytes())
        yield client


def pipeline(device, max_entries: int = 8) -> Pipeline:
    s3 = make_s3_client(REGION)
    engine = Engine(device, EmbeddingCache(max_entries, 2**30))
    return Pipeline(engine, MaskStore(s3, "masks", region=REGION), ImageSources(s3, frozenset({"photos"}), 10**7),
                    max_image_pixels=50_000_000, max_image_side=16384)


def stored_mask(s3, url: str) -> np.ndarray:
    body = s3.get_object(Bucket="masks", Key=url.split(".amazonaws.com/")[1])["Body"].read()
    return np.array(Image.open(io.BytesIO(body))) == 255


def test_masks_are_the_predictors_and_a_repeat_skips_the_encoder(s3, device, reference_mask, test_images):
    flow = pipeline(device)
    data = (test_images / "rocket.jpg").read_bytes()
    prompt = Prompt(points=[[320, 200]])
    first_timer, again_timer = StageTimer(), StageTimer()
    first = flow.run(ImageRequest(upload=data), [prompt], first_timer)
    again = flow.run(ImageRequest(upload=data), [prompt], again_timer)
    expected, score = reference_mask(upright_rgb(test_images / "rocket.jpg"), points=[[320, 200]])
    assert (first.width, first.height, first.cached, again.cached) == (640, 427, False, True)
    for result in (first, again):
        assert np.array_equal(stored_mask(s3, result.masks[0].url), expected)
        assert result.masks[0].score == pytest.approx(score, abs=1e-6)
    assert {"image_decode", "encoder", "decoder", "model_call", "png", "store"} <= set(first_timer.seconds)
    assert "encoder" not in again_timer.seconds and "image_decode" not in again_timer.seconds


def test_an_image_id_alone_is_served_from_the_cache_or_is_a_404(s3, device, test_images):
    flow = pipeline(device)
    flow.run(ImageRequest(upload=(test_images / "coffee.png").read_bytes(), image_id="cup"),
             [Prompt(box=[10, 10, 300, 300])], StageTimer())
    hit = flow.run(ImageRequest(image_id="cup"), [Prompt(points=[[100, 100]])], StageTimer())
    assert hit.cached and (hit.width, hit.height) == (600, 400)
    with pytest.raises(UnknownImageId, match="image_id 'never' is not cached here"):
        flow.run(ImageRequest(image_id="never"), [Prompt(points=[[1, 1]])], StageTimer())


def test_an_evicted_image_id_with_its_url_is_fetched_again_not_a_404(s3, device, reference_mask, test_images):
    flow = pipeline(device, max_entries=1)
    request = ImageRequest(url="s3://photos/cat.png", image_id="cat")
    prompt = [Prompt(points=[[225, 150]])]
    assert not flow.run(request, prompt, StageTimer()).cached
    s3.delete_object(Bucket="photos", Key="cat.png")
    assert flow.run(request, prompt, StageTimer()).cached  # cached: the URL is not fetched again
    flow.run(ImageRequest(upload=(test_images / "coffee.png").read_bytes()), prompt, StageTimer())  # evicts "cat"
    with pytest.raises(InvalidImageSource, match="s3://photos/cat.png does not exist"):
        flow.run(request, prompt, StageTimer())  # evicted: fetched (and gone), not "unknown image_id"
    s3.put_object(Bucket="photos", Key="cat.png", Body=(test_images / "chelsea.png").read_bytes())
    result = flow.run(request, prompt, StageTimer())
    expected, _ = reference_mask(upright_rgb(test_images / "chelsea.png"), points=[[225, 150]])
    assert not result.cached and np.array_equal(stored_mask(s3, result.masks[0].url), expected)


def test_an_image_url_is_checked_even_when_its_image_id_is_cached(s3, device, test_images):
    flow = pipeline(device)
    flow.run(ImageRequest(upload=(test_images / "chelsea.png").read_bytes(), image_id="seen"),
             [Prompt(points=[[1, 1]])], StageTimer())
    with pytest.raises(InvalidImageSource, match="must be s3://bucket/key or https://"):
        flow.run(ImageRequest(url="file:///etc/passwd", image_id="seen"), [Prompt(points=[[1, 1]])], StageTimer())


def test_tenants_never_share_embeddings(s3, device, reference_mask, test_images):
    flow = pipeline(device)
    cat, cup = (test_images / "chelsea.png").read_bytes(), (test_images / "coffee.png").read_bytes()
    box = [Prompt(box=[20, 20, 300, 280])]
    assert not flow.run(ImageRequest(upload=cat, image_id="shared-name"), box, StageTimer(), tenant="a").cached
    with pytest.raises(UnknownImageId):
        flow.run(ImageRequest(image_id="shared-name"), box, StageTimer(), tenant="b")
    b = flow.run(ImageRequest(upload=cup, image_id="shared-name"), box, StageTimer(), tenant="b")
    assert not b.cached and (b.width, b.height) == (600, 400)  # b's own image, not a's cat
    expected, _ = reference_mask(upright_rgb(test_images / "coffee.png"), box=[20, 20, 300, 280])
    assert np.array_equal(stored_mask(s3, b.masks[0].url), expected)
    assert not flow.run(ImageRequest(upload=cat), box, StageTimer(), tenant="b").cached  # same bytes, other tenant


def test_request_errors_keep_their_kind_across_the_model_call(s3, device, test_images):
    flow = pipeline(device)
    cat = (test_images / "chelsea.png").read_bytes()
    with pytest.raises(InvalidPrompt, match=r"point 0 \(452.0, 10.0\) is outside the 451x300 image"):
        flow.run(ImageRequest(upload=cat), [Prompt(points=[[452, 10]])], StageTimer())
    with pytest.raises(InvalidImageSource, match="not both"):
        flow.run(ImageRequest(upload=cat, url="s3://photos/cat.png"), [Prompt(points=[[1, 1]])], StageTimer())
    with pytest.raises(MissingImage, match="`image_url`"):
        flow.run(ImageRequest(), [Prompt(points=[[1, 1]])], StageTimer())
