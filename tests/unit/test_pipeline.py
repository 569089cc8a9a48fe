"""The API side of a request, in process: Pipeline over a real Engine (the test checkpoint on the
CPU) and moto's in-process S3. The masks must be SAM2ImagePredictor's; each request resolves its
image once; an evicted embedding is recomputed, never a 404; tenants never share embeddings."""

from __future__ import annotations

import io
import logging
import time
from http import HTTPStatus

import aiohttp
import boto3
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException
from moto import mock_aws
from PIL import Image

from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.device_thread import DeviceThread
from sam2_api.model.engine import Engine
from sam2_api.errors import (
    InvalidImageSource, InvalidPrompt, MissingImage, ModelUnavailable, ResponseTooLarge, UnknownImageId,
)
from sam2_api.maskformats import RLE_FIELDS_BYTES, json_bytes
from sam2_api.api.segment import STALE_CONNECTION_S, ImageRequest, Pipeline
from sam2_api.prompts import Prompt
from sam2_api.model.segmenter import Segmenter
from sam2_api.api.image_urls import ImageSources
from sam2_api.api.storage import MaskStore, make_s3_client
from sam2_api.timing import StageTimer
from tests.conftest import upright_rgb

REGION = "us-east-1"
TENANT_A, TENANT_B = "a" * 16, "b" * 16  # two API keys' ids, as RequestGuard makes them (16 hex digits)


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


def pipeline(device, max_entries: int = 8, **options) -> Pipeline:
    s3 = make_s3_client(REGION)
    engine = Engine(device, EmbeddingCache(max_entries, 2**30))
    return Pipeline(engine, MaskStore(s3, "masks", region=REGION), ImageSources(s3, frozenset({"photos"}), 10**7),
                    max_image_pixels=50_000_000, max_image_side=16384, **options)


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
    assert not flow.run(ImageRequest(upload=cat, image_id="shared-name"), box, StageTimer(), tenant=TENANT_A).cached
    with pytest.raises(UnknownImageId):
        flow.run(ImageRequest(image_id="shared-name"), box, StageTimer(), tenant=TENANT_B)
    b = flow.run(ImageRequest(upload=cup, image_id="shared-name"), box, StageTimer(), tenant=TENANT_B)
    assert not b.cached and (b.width, b.height) == (600, 400)  # b's own image, not a's cat
    expected, _ = reference_mask(upright_rgb(test_images / "coffee.png"), box=[20, 20, 300, 280])
    assert np.array_equal(stored_mask(s3, b.masks[0].url), expected)
    assert not flow.run(ImageRequest(upload=cat), box, StageTimer(), tenant=TENANT_B).cached  # same bytes, other tenant


def test_request_errors_keep_their_kind_across_the_model_call(s3, device, test_images):
    flow = pipeline(device)
    cat = (test_images / "chelsea.png").read_bytes()
    with pytest.raises(InvalidPrompt, match=r"point 0 \(452.0, 10.0\) is outside the 451x300 image"):
        flow.run(ImageRequest(upload=cat), [Prompt(points=[[452, 10]])], StageTimer())
    with pytest.raises(InvalidImageSource, match="not both"):
        flow.run(ImageRequest(upload=cat, url="s3://photos/cat.png"), [Prompt(points=[[1, 1]])], StageTimer())
    with pytest.raises(MissingImage, match="`image_url`"):
        flow.run(ImageRequest(), [Prompt(points=[[1, 1]])], StageTimer())


# ---- Refinement, candidates and formats ------------------------------------------------------------

def test_each_click_refines_the_previous_answer_exactly_as_the_predictor_does(s3, device, reference_predictor, test_images):
    """Three clicks on the cat, each request sending every click so far and the last mask_id."""
    flow = pipeline(device)
    image = upright_rgb(test_images / "chelsea.png")
    predictor = reference_predictor(image)
    data = (test_images / "chelsea.png").read_bytes()
    points, labels = [[225, 150], [300, 100], [50, 50]], [1, 1, 0]
    mask_id, previous = None, None
    for count in range(1, 4):
        result = flow.run(ImageRequest(upload=data),
                          [Prompt(points=points[:count], labels=labels[:count], previous_mask_id=mask_id)], StageTimer())
        masks, scores, logits = predictor.predict(
            point_coords=np.asarray(points[:count], dtype=np.float32), point_labels=np.asarray(labels[:count]),
            mask_input=None if previous is None else previous[None], multimask_output=count == 1)
        best = int(np.argmax(scores))
        served = stored_mask(s3, result.masks[0].url)
        assert np.array_equal(served, masks[best] > 0), f"click {count}"
        assert result.masks[0].score == pytest.approx(float(scores[best]), abs=1e-6)
        mask_id, previous = result.masks[0].mask_id, logits[best]


def test_steps_in_one_request_are_the_chain_of_separate_requests_and_only_its_answer_is_stored(s3, device,
                                                                                                test_images):
    """A lone click choosing its third candidate, a second click, then the request's own prompt:
    the same mask as three requests chained by hand, with one PNG stored, for the last only."""
    from sam2_api.api.fields.segment import Step

    flow = pipeline(device)
    cat = ImageRequest(url="s3://photos/cat.png")  # no image_id: fetched (and hashed) once per request
    first = Prompt(points=[[225, 150]], candidates=True)
    second = Prompt(points=[[225, 150], [300, 100]])
    last = Prompt(points=[[225, 150], [300, 100], [50, 50]], labels=[1, 1, 0])
    picked = flow.run(cat, [first], StageTimer()).masks[0].candidates[2]
    refined = flow.run(cat, [second.model_copy(update={"previous_mask_id": picked.mask_id})], StageTimer()).masks[0]
    chain = flow.run(cat, [last.model_copy(update={"previous_mask_id": refined.mask_id})], StageTimer()).masks[0]
    stored = lambda: s3.list_objects_v2(Bucket="masks").get("KeyCount", 0)
    before, timer = stored(), StageTimer()
    result = flow.run(cat, [last], timer, steps=[Step(first, chosen=2), Step(second)], formats=("rle",))
    one = result.masks[0]
    assert stored() == before + 1 and result.cached  # the steps made no PNG; the embedding was cached
    assert np.array_equal(stored_mask(s3, one.url), stored_mask(s3, chain.url))
    assert (one.score, one.details["bbox"], one.details["area"]) == (chain.score, chain.details["bbox"],
                                                                      chain.details["area"])
    assert one.mask_id != chain.mask_id and set(one.details) == {"bbox", "area", "rle"}
    best = flow.run(cat, [last], StageTimer(), steps=[Step(first), Step(second)]).masks[0]
    assert not np.array_equal(stored_mask(s3, best.url), stored_mask(s3, one.url)), "`chosen` made no difference"


def test_formats_give_back_the_pngs_pixels_and_candidates_the_predictors_three(s3, device, reference_predictor, test_images):
    from pycocotools import mask as coco_mask

    from sam2_api.maskformats import rasterise

    flow = pipeline(device)
    result = flow.run(ImageRequest(upload=(test_images / "chelsea.png").read_bytes()),
                      [Prompt(points=[[225, 150]], candidates=True)], StageTimer(),
                      formats=frozenset({"rle", "polygons"}))
    predictor = reference_predictor(upright_rgb(test_images / "chelsea.png"))
    masks, scores, _ = predictor.predict(point_coords=np.asarray([[225.0, 150.0]]), point_labels=np.asarray([1]))
    best = result.masks[0]
    assert [c.mask_id for c in best.candidates][0] == best.mask_id and best.candidates[0].url == best.url
    assert len({c.mask_id for c in best.candidates}) == 3
    for candidate, index in zip(best.candidates, np.argsort(-scores, kind="stable")):
        pixels = stored_mask(s3, candidate.url)
        assert np.array_equal(pixels, masks[index] > 0) and candidate.score == pytest.approx(float(scores[index]), abs=1e-6)
        details = candidate.details
        rle = details["rle"]
        assert np.array_equal(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == 1, pixels)
        assert np.array_equal(rasterise(details["polygons"], *pixels.shape), pixels)
        rows, cols = np.nonzero(pixels)
        assert details["bbox"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert details["area"] == pixels.sum()
    assert len(best.response_fields()["candidates"]) == 3


def test_a_mask_id_of_another_image_or_caller_or_unknown_is_refused_before_any_work(s3, device, test_images):
    from sam2_api.errors import InvalidField, MaskIdOfAnotherImage, UnknownMaskId

    flow = pipeline(device)
    cat, cup = (test_images / "chelsea.png").read_bytes(), (test_images / "coffee.png").read_bytes()
    first = flow.run(ImageRequest(upload=cat), [Prompt(points=[[225, 150]])], StageTimer(), tenant=TENANT_A)
    mask_id = first.masks[0].mask_id
    again = [Prompt(points=[[225, 150], [300, 100]], previous_mask_id=mask_id)]
    timer = StageTimer()
    with pytest.raises(MaskIdOfAnotherImage, match="belongs to a mask of another image"):
        flow.run(ImageRequest(upload=cup), again, timer, tenant=TENANT_A)
    assert "encoder" not in timer.seconds and "image_decode" not in timer.seconds  # the cup was never decoded
    with pytest.raises(UnknownMaskId, match="is not known here"):
        flow.run(ImageRequest(upload=cat), again, StageTimer(), tenant=TENANT_B)
    with pytest.raises(UnknownMaskId):
        flow.run(ImageRequest(upload=cat), [Prompt(points=[[1, 1]], previous_mask_id="m_" + "A" * 22)], StageTimer(),
                 tenant=TENANT_A)
    with pytest.raises(InvalidField, match="not both"):
        flow.run(ImageRequest(upload=cat), again, StageTimer(), tenant=TENANT_A, mask_files=[b"any"])
    assert flow.run(ImageRequest(upload=cat), again, StageTimer(), tenant=TENANT_A).cached


def test_a_mask_file_is_used_as_the_mask_input(s3, device, reference_predictor, test_images):
    from sam2_api.maskinput import logits, low_res_mask

    flow = pipeline(device)
    image = upright_rgb(test_images / "chelsea.png")
    start = np.zeros(image.shape[:2], dtype=np.uint8)
    start[60:240, 120:330] = 255
    buffer = io.BytesIO()
    Image.fromarray(start).save(buffer, format="PNG")
    prompt = Prompt(points=[[225, 150], [60, 40]], labels=[1, 0])
    result = flow.run(ImageRequest(upload=(test_images / "chelsea.png").read_bytes()), [prompt], StageTimer(),
                      mask_files=[buffer.getvalue()])
    predictor = reference_predictor(image)
    mask_input = logits(low_res_mask(buffer.getvalue(), 10**8, 16384), 10.0)  # the engine's default amplitude
    masks, scores, _ = predictor.predict(point_coords=np.asarray(prompt.points, dtype=np.float32),
                                         point_labels=np.asarray([1, 0]), mask_input=mask_input[None],
                                         multimask_output=False)
    assert np.array_equal(stored_mask(s3, result.masks[0].url), masks[0] > 0)
    without, _, _ = predictor.predict(point_coords=np.asarray(prompt.points, dtype=np.float32),
                                      point_labels=np.asarray([1, 0]), multimask_output=False)
    assert not np.array_equal(without[0] > 0, masks[0] > 0)  # the file made a difference


def test_formats_past_the_response_bound_are_refused_before_any_png_is_made(s3, device, test_images):
    data = (test_images / "rocket.jpg").read_bytes()
    prompts = [Prompt(points=[[80 * i + 100, 200]], candidates=True) for i in range(4)]  # 12 masks
    both = frozenset({"rle", "polygons"})
    served = pipeline(device).run(ImageRequest(upload=data), prompts, StageTimer(), formats=both)
    assert len(s3.list_objects_v2(Bucket="masks")["Contents"]) == 12
    # What each mask's formats take as JSON: the RLE string with its fields, each ring's vertices.
    sizes = [len(mask.details["rle"]["counts"]) + RLE_FIELDS_BYTES
             + sum(json_bytes(np.array(ring)) for part in mask.details["polygons"]
                   for ring in [part["exterior"], *part["holes"]])
             for prompt in served.masks for mask in prompt.candidates]
    bound = sum(sizes[:5]) + sizes[5] // 2  # 5 of the 12 masks fit, the 6th does not
    with pytest.raises(ResponseTooLarge, match=rf"larger than {bound} bytes \(SAM2_MAX_RESPONSE_BYTES\): 5 of 12 "
                       r"masks fit; ask for fewer `formats` \(polygons are the larger\), a `polygon_tolerance` .*"
                       r", or fewer objects or candidates$"):
        pipeline(device, max_response_bytes=bound).run(ImageRequest(upload=data), prompts, StageTimer(), formats=both)
    assert len(s3.list_objects_v2(Bucket="masks")["Contents"]) == 12  # not one more PNG made or stored


def decoder_calls() -> float:
    """Decoder calls the model side has made in this process (its ``sam2_stage_seconds`` count)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("sam2_stage_seconds_count", {"stage": "decoder"}) or 0.0


def test_formats_are_made_in_rounds_that_stop_the_model_at_the_bound(s3, device, test_images):
    data = (test_images / "rocket.jpg").read_bytes()
    prompts = [Prompt(points=[[80 * i + 100, 200]], candidates=True) for i in range(4)]
    both = frozenset({"rle", "polygons"})
    before = decoder_calls()
    in_one_call = pipeline(device).run(ImageRequest(upload=data), prompts, StageTimer())
    assert decoder_calls() - before == 4  # no formats: every prompt at once (one decoder call each on the CPU)
    before = decoder_calls()
    in_rounds = pipeline(device).run(ImageRequest(upload=data), prompts, StageTimer(), formats=both)
    assert decoder_calls() - before == 4  # the first prompt, then the rest: each prompt decoded once
    for one, other in zip(in_one_call.masks, in_rounds.masks, strict=True):
        for mask, same in zip(one.candidates, other.candidates, strict=True):
            assert np.array_equal(stored_mask(s3, mask.url), stored_mask(s3, same.url)) and mask.score == same.score
            assert {k: v for k, v in same.details.items() if k in ("bbox", "area")} == mask.details
    # A bound that the first prompt's masks already pass: refused after its one decoder call, not four.
    before = decoder_calls()
    with pytest.raises(ResponseTooLarge, match=r"larger than 100 bytes \(SAM2_MAX_RESPONSE_BYTES\): 0 of 12 masks fit"):
        pipeline(device, max_response_bytes=100).run(ImageRequest(upload=data), prompts, StageTimer(), formats=both)
    assert decoder_calls() - before == 1


def test_without_s3_formats_still_come_back(device, test_images, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = make_s3_client(REGION)
    flow = Pipeline(Engine(device, EmbeddingCache(8, 2**30)), MaskStore(s3, None, region=REGION),
                    ImageSources(s3, frozenset(), 10**7), max_image_pixels=50_000_000, max_image_side=16384)
    result = flow.run(ImageRequest(upload=(test_images / "chelsea.png").read_bytes()), [Prompt(box=[20, 20, 300, 280])],
                      StageTimer(), formats=frozenset({"rle"}))
    mask = result.masks[0]
    assert mask.url is None and mask.details["rle"]["size"] == [300, 451] and mask.mask_id.startswith("m_")


class FailingConnection:
    """The model service behind a connection that fails: each of ``failures`` (an exception, and
    seconds it takes to fail) is raised by one call before it reaches the engine, as BentoML's
    httpx client raises it; later calls reach the engine."""

    def __init__(self, engine: Engine, failures: list[tuple[Exception, float]]) -> None:
        self.engine, self.failures, self.calls = engine, list(failures), 0

    def predict(self, **kwargs):
        self.calls += 1
        if self.failures:
            exc, seconds = self.failures.pop(0)
            time.sleep(seconds)
            raise exc
        return self.engine.predict(**kwargs)


def with_connection(device, failures) -> tuple[Pipeline, FailingConnection]:
    flow = pipeline(device)
    connection = FailingConnection(flow.model, failures)
    flow.model = connection
    return flow, connection


@pytest.mark.parametrize("closed", [
    aiohttp.ServerDisconnectedError(),  # BentoML's client for a dependency (aiohttp)
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
], ids=["aiohttp", "httpx"])
def test_a_connection_closed_as_it_was_reused_is_sent_again_once(s3, device, reference_mask, test_images, caplog,
                                                                 closed):
    caplog.set_level(logging.INFO, logger="sam2_api.api.segment")
    flow, connection = with_connection(device, [(closed, 0.0)])
    result = flow.run(ImageRequest(upload=(test_images / "rocket.jpg").read_bytes()), [Prompt(points=[[320, 200]])],
                      StageTimer())
    expected, _ = reference_mask(upright_rgb(test_images / "rocket.jpg"), points=[[320, 200]])
    assert np.array_equal(stored_mask(s3, result.masks[0].url), expected)
    assert connection.calls == 3  # the failed call, its repeat (needs the image), the call with the image
    assert f"failed at once ({type(closed).__name__}); sending the call again" in caplog.text


@pytest.mark.parametrize("failures", [
    [(httpx.ReadError("reset"), 0.0), (httpx.ReadError("reset"), 0.0)],  # twice: not a stale connection
    [(httpx.ReadError("reset"), STALE_CONNECTION_S + 0.2)],  # late: the work may be running there
    [(httpx.ReadTimeout("timed out"), 0.0)],  # a timeout is never repeated
    [(aiohttp.ServerTimeoutError("timed out"), 0.0)],
    [(aiohttp.ServerDisconnectedError(), 0.0), (aiohttp.ClientOSError(111, "Connection refused"), 0.0)],
    [(aiohttp.ClientPayloadError("Response payload is not completed"), 0.0)],  # killed mid-answer
    [(BentoMLException("refused", error_code=HTTPStatus.UNAUTHORIZED), 0.0)],  # another SAM2_INTERNAL_TOKEN
], ids=["twice", "late", "timeout", "aiohttp-timeout", "aiohttp-twice", "cut-off", "token-refused"])
def test_other_connection_failures_are_a_503_without_a_repeat(s3, device, test_images, failures):
    flow, connection = with_connection(device, failures)
    with pytest.raises(ModelUnavailable):
        flow.run(ImageRequest(upload=(test_images / "rocket.jpg").read_bytes()), [Prompt(points=[[320, 200]])],
                 StageTimer())
    assert connection.calls == len(failures)
