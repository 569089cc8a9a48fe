"""Segment everything on the API side, in process: the pipeline over a real Engine (the test
checkpoint on the CPU) and moto's in-process S3. What is stored must be the model's objects: each
PNG its mask, the label map those masks under the overlap rule; the cache is the other routes'."""

from __future__ import annotations

import io

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.device_thread import DeviceThread
from sam2_api.model.engine import Engine
from sam2_api.errors import DeadlineExceeded, InvalidField, ResponseTooLarge, UnknownImageId
from sam2_api.api.everything import segment_everything
from sam2_api.messages import EverythingLimits
from sam2_api.api.fields.everything import parse_output, parse_params
from sam2_api.api.labelmap import read_png
from sam2_api.maskformats import coco_rle, from_coco_rle, rasterise
from sam2_api.api.segment import ImageRequest, Pipeline
from sam2_api.prompts import Prompt
from sam2_api.model.segmenter import Segmenter
from sam2_api.api.image_urls import ImageSources
from sam2_api.api.storage import MaskStore, make_s3_client
from sam2_api.timing import StageTimer
from tests.conftest import upright_rgb

REGION = "us-east-1"
KEEP_ALL = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def device(sam2_model) -> DeviceThread:
    return DeviceThread(Segmenter(sam2_model))


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket="masks")
        yield client


def pipeline(device, limits: EverythingLimits = EverythingLimits(), **options) -> Pipeline:
    s3 = make_s3_client(REGION)
    engine = Engine(device, EmbeddingCache(8, 2**30), everything_limits=limits)
    return Pipeline(engine, MaskStore(s3, "masks", region=REGION), ImageSources(s3, frozenset(), 10**7),
                    max_image_pixels=50_000_000, max_image_side=16384, **options)


@pytest.fixture(scope="module")
def photo(test_images) -> bytes:
    """A small PNG (64x48) of the cat, so that the CPU decoder stays fast."""
    buffer = io.BytesIO()
    Image.fromarray(upright_rgb(test_images / "chelsea.png")).resize((64, 48)).save(buffer, format="PNG")
    return buffer.getvalue()


def stored(s3, url: str) -> bytes:
    return s3.get_object(Bucket="masks", Key=url.split(".amazonaws.com/")[1])["Body"].read()


def test_label_map_and_masks_agree_and_the_cache_is_the_other_routes(s3, device, photo):
    flow = pipeline(device)
    assert not flow.run(ImageRequest(upload=photo), [Prompt(points=[[30, 20]])], StageTimer()).cached
    timer = StageTimer()
    result = segment_everything(flow, ImageRequest(upload=photo), parse_params(points_per_side=2, **KEEP_ALL),
                                parse_output(["rle", "polygons"]), timer)
    assert result.cached and "encoder" not in timer.seconds  # /segment encoded this image already
    assert {"everything", "objects", "png", "store"} <= set(timer.seconds)
    assert (result.width, result.height, result.found, len(result.objects)) == (64, 48, 12, 12)
    areas = [o.described["area"] for o in result.objects]
    assert areas == sorted(areas, reverse=True)

    masks = []
    for found in result.objects:
        png = np.array(Image.open(io.BytesIO(stored(s3, found.mask.url))))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        mask = png == 255
        masks.append(mask)
        rows, cols = np.nonzero(mask)
        assert found.described["bbox"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert found.described["area"] == mask.sum()
        assert found.described["rle"] == coco_rle(mask)
        assert np.array_equal(from_coco_rle(found.described["rle"]["counts"], 48, 64), mask)
        assert np.array_equal(rasterise(found.described["polygons"], 48, 64), mask)

    labels = read_png(stored(s3, result.label_map.url))
    assert labels.shape == (48, 64)
    scores = [found.predicted_iou for found in result.objects]
    for y in range(48):
        for x in range(64):
            covering = [i for i, mask in enumerate(masks) if mask[y, x]]
            expected = min(covering, key=lambda i: (-scores[i], i)) + 1 if covering else 0
            assert labels[y, x] == expected
    assert len(np.unique(labels)) > 2  # more than one object shows: the overlap rule was exercised


def test_without_per_object_masks_only_the_label_map_is_stored(s3, device, photo):
    result = segment_everything(pipeline(device), ImageRequest(upload=photo), parse_params(points_per_side=1, **KEEP_ALL),
                                parse_output(per_object_masks=False), StageTimer())
    assert len(result.objects) == 3 and all(o.mask == (None, "not requested") for o in result.objects)
    assert all(set(o.described) == {"bbox", "area"} for o in result.objects)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="masks")["Contents"]]
    assert len(keys) == 1 and result.label_map.url.endswith(keys[0])
    assert read_png(stored(s3, result.label_map.url)).max() >= 1


def test_an_image_id_alone_serves_without_crops_but_crops_need_the_pixels(s3, device, photo):
    flow = pipeline(device)
    plain = parse_params(points_per_side=1, **KEEP_ALL)
    with pytest.raises(UnknownImageId, match="image_id 'cat' is not cached here"):
        segment_everything(flow, ImageRequest(image_id="cat"), plain, parse_output(), StageTimer())
    segment_everything(flow, ImageRequest(upload=photo, image_id="cat"), plain, parse_output(), StageTimer())
    assert segment_everything(flow, ImageRequest(image_id="cat"), plain, parse_output(), StageTimer()).cached
    with pytest.raises(InvalidField, match="crop_n_layers > 0 encodes crops from the image's pixels: send `image`"):
        segment_everything(flow, ImageRequest(image_id="cat"), parse_params(points_per_side=1, crop_n_layers=1),
                           parse_output(), StageTimer())


def test_errors_of_the_model_side_keep_their_kind(s3, device, photo):
    with pytest.raises(InvalidField, match=r"64 points per side do not fit the image \(64x48 pixels\): at most 48"):
        segment_everything(pipeline(device), ImageRequest(upload=photo), parse_params(points_per_side=64),
                           parse_output(), StageTimer())
    hurried = pipeline(device, EverythingLimits(deadline_s=0.001))
    with pytest.raises(DeadlineExceeded, match="would not finish within its 0.001 s deadline"):
        segment_everything(hurried, ImageRequest(upload=photo), parse_params(points_per_side=2), parse_output(),
                           StageTimer())


def test_the_model_service_gets_what_is_left_of_the_requests_deadline(s3, device, photo):
    # The service's limit is 60 s; this request has 1 ms left of its own when it reaches the model.
    with pytest.raises(DeadlineExceeded, match=r"\(SAM2_EVERYTHING_DEADLINE_S\)"):
        segment_everything(pipeline(device), ImageRequest(upload=photo), parse_params(points_per_side=2),
                           parse_output(), StageTimer(), deadline_s=0.001)
    assert "Contents" not in s3.list_objects_v2(Bucket="masks")


def test_formats_past_the_response_bound_are_refused_before_any_png_is_made(s3, device, photo):
    request, params = ImageRequest(upload=photo), parse_params(points_per_side=2, **KEEP_ALL)
    with pytest.raises(ResponseTooLarge, match=r"larger than 300 bytes \(SAM2_MAX_RESPONSE_BYTES\): \d+ of 12 masks "
                       r"fit; ask for fewer `formats` .*, or lower max_objects \(256\)$"):
        segment_everything(pipeline(device, max_response_bytes=300), request, params,
                           parse_output(["rle", "polygons"]), StageTimer())
    assert "Contents" not in s3.list_objects_v2(Bucket="masks")
    served = segment_everything(pipeline(device), request, params, parse_output(["rle", "polygons"]), StageTimer())
    assert len(served.objects) == 12 and all(o.mask.url and "polygons" in o.described for o in served.objects)
