"""Label Studio's ML-backend protocol: the labelling config, the context as our prompt (percent to
pixels), bad input in words, our regions (brush RLE, bitmask PNG), where task images are fetched
from, and the guard's basic auth. Label Studio's own decoder checks the RLE in
tests/clients/labelstudio_decode.py (tests/integration/test_labelstudio_api.py runs it)."""

from __future__ import annotations

import base64
import io
import json
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from sam2_api import brush_rle
from sam2_api.api import labelstudio
from sam2_api.api.guard import RequestGuard
from sam2_api.api.image_urls import ImageSources
from sam2_api.api.labelstudio_config import MAX_CONFIG_BYTES, parse_label_config
from sam2_api.api.labelstudio_images import TaskImages
from sam2_api.api.segment import Result, StoredMask
from sam2_api.errors import ForbiddenSource, InvalidField, InvalidImageSource, InvalidPrompt, ResponseTooLarge
from sam2_api.maskformats import describe
from tests.unit.test_guard import APP, JSON, exchange

# The config of Label Studio's own SAM tests (label-studio-ml-backend, examples/segment_anything_model/test_predict.py)
CONFIG = """
<View>
    <Image name="image" value="$image" zoom="true"/>
    <BrushLabels name="tag" toName="image">
        <Label value="Banana" background="#FF0000"/>
        <Label value="Orange" background="#0d14d3"/>
    </BrushLabels>
    <KeyPointLabels name="tag2" toName="image" smart="true" >
        <Label value="Banana" background="#000000" showInline="true"/>
        <Label value="Orange" background="#000000" showInline="true"/>
    </KeyPointLabels>
    <RectangleLabels name="tag3" toName="image"  >
        <Label value="Banana" background="#000000" showInline="true"/>
        <Label value="Orange" background="#000000" showInline="true"/>
    </RectangleLabels>
</View>
"""
BITMASK_CONFIG = CONFIG.replace("</View>\n", '<BitmaskLabels name="bits" toName="image"><Label value="Orange"/>'
                                                "</BitmaskLabels></View>\n")
KEYPOINT = {  # as in that test: a smart keypoint, in percent of a 1080 x 1080 image
    "original_width": 1080, "original_height": 1080, "image_rotation": 0,
    "value": {"x": 49.441786283891545, "y": 59.96810207336522, "width": 0.3189792663476874,
              "labels": ["Banana"], "keypointlabels": ["Banana"]},
    "is_positive": True, "id": "fBWv1t0S2L", "from_name": "tag2", "to_name": "image", "type": "keypointlabels",
    "origin": "manual",
}
RECTANGLE = {"original_width": 1080, "original_height": 1080, "type": "rectanglelabels",
             "value": {"x": 50, "y": 50, "width": 10, "height": 10, "rectanglelabels": ["Orange"]}}
TASKS = [{"id": 7, "data": {"image": "/data/upload/1/photo.jpg"}}]


def params(*regions) -> dict:
    return {"login": None, "password": None, "context": {"result": list(regions)}}


# --- the labelling config ---

def test_the_config_names_the_image_field_and_the_tags_pointing_at_it():
    config = parse_label_config(BITMASK_CONFIG, "label_config")
    assert config.images == {"image": "image"}
    assert [(c.tag, c.name, c.labels) for c in config.outputs_for("image")] == [
        ("brushlabels", "tag", ("Banana", "Orange")), ("bitmasklabels", "bits", ("Orange",))]
    config.check_usable("schema")


@pytest.mark.parametrize("text, words", [
    (None, "must be the project's labelling config"),
    ("<View><Image", "is not well-formed XML"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><View/>', "<!DOCTYPE>"),
    ("<View>" + " " * 600_000 + "</View>", "is over"),
])
def test_a_config_that_cannot_be_read_is_400_in_words(text, words):
    with pytest.raises(InvalidField, match=words):
        parse_label_config(text, "schema")


@pytest.mark.parametrize("text", [
    '<View><Image name="image" value="$image"/><KeyPointLabels name="k" toName="image"/></View>',  # no mask tag
    '<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image"/></View>',  # no click tag
    '<View><Image name="image" value="$image"/><BrushLabels name="b" toName="other"/>'
    '<KeyPointLabels name="k" toName="image"/></View>',  # the mask tag points elsewhere
])
def test_a_config_without_what_sam_needs_says_so(text):
    with pytest.raises(InvalidField, match="needs an <Image>, a <BrushLabels>"):
        parse_label_config(text, "schema").check_usable("schema")


# --- the context as our prompt ---

def test_no_context_is_no_click_and_no_work():
    assert labelstudio.parse_predict(TASKS, CONFIG, {"login": None, "password": None, "context": None}) is None
    assert labelstudio.parse_predict(TASKS, CONFIG, None) is None
    assert labelstudio.parse_predict(TASKS, CONFIG, params()) is None


def test_a_keypoint_in_percent_becomes_a_point_in_pixels_of_the_image_itself():
    found = labelstudio.parse_predict(TASKS, CONFIG, params(KEYPOINT))
    assert found.image_url == "/data/upload/1/photo.jpg" and found.image_field == "tasks[0].data.image"
    assert found.size == (1080, 1080) and found.label == "Banana"
    prompt = found.prompt(1080, 1080)
    assert prompt.points == [[49.441786283891545 * 1080 / 100, 59.96810207336522 * 1080 / 100]]
    assert prompt.labels == [1] and prompt.box is None and prompt.wants_multimask  # a lone click: best of three
    # percent of the image: another size (a resized copy) gives that image's pixels
    assert found.prompt(540, 270).points == [[49.441786283891545 * 540 / 100, 59.96810207336522 * 270 / 100]]


def test_negative_keypoints_and_a_rectangle_make_labels_and_a_box():
    negative = {**KEYPOINT, "is_positive": False, "value": {**KEYPOINT["value"], "x": 10, "y": 20}}
    found = labelstudio.parse_predict(TASKS, CONFIG, params(KEYPOINT, negative, RECTANGLE))
    prompt = found.prompt(200, 100)
    assert prompt.labels == [1, 0] and prompt.points[1] == [20.0, 20.0]
    assert prompt.box == [100.0, 50.0, 120.0, 60.0] and not prompt.wants_multimask
    assert found.label == "Orange"  # the last region's label


def test_a_keypoint_without_is_positive_is_a_click_on_the_object():
    region = {k: v for k, v in KEYPOINT.items() if k != "is_positive"}
    assert labelstudio.parse_predict(TASKS, CONFIG, params(region)).prompt(10, 10).labels == [1]


@pytest.mark.parametrize("region, error, words", [
    ({**KEYPOINT, "value": {"x": "50", "y": 1}}, InvalidPrompt, "`params.context.result[0].value.x` must be a number"),
    ({**KEYPOINT, "value": {"x": float("nan"), "y": 1}}, InvalidPrompt, "must be a number"),
    ({**KEYPOINT, "value": {"x": 1e308, "y": 1}}, InvalidPrompt, "`params.context.result[0].value.x` must be a number"),
    ({**KEYPOINT, "value": {"x": 1, "y": -float("inf")}}, InvalidPrompt, "`params.context.result[0].value.y` must be"),
    ({**KEYPOINT, "is_positive": "yes"}, InvalidPrompt, "`params.context.result[0].is_positive` must be true or false"),
    ({**KEYPOINT, "original_width": 0}, InvalidPrompt, "the same `original_width` and `original_height`"),
    ({**KEYPOINT, "image_rotation": 90}, InvalidPrompt, "is rotated"),
    ({**RECTANGLE, "value": {**RECTANGLE["value"], "rotation": 30}}, InvalidPrompt, "is rotated"),
    ({**KEYPOINT, "to_name": "nope"}, InvalidField, "is not an <Image> of `label_config`"),
    ({**KEYPOINT, "value": None}, InvalidPrompt, "`params.context.result[0].value` must be an object"),
])
def test_bad_regions_are_4xx_naming_the_field(region, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        labelstudio.parse_predict(TASKS, CONFIG, params(region))


@pytest.mark.parametrize("tasks, config, body, words", [
    ([], CONFIG, params(KEYPOINT), "`tasks` must hold the one task"),
    (TASKS * 2, CONFIG, params(KEYPOINT), "`tasks` must hold the one task"),
    ([{"data": {"img": "x"}}], CONFIG, params(KEYPOINT), "the task has no `data.image`"),
    (TASKS, "<View/>", params(KEYPOINT), "is not an <Image>"),
    (TASKS, CONFIG, {"context": "click"}, "`params.context` must be an object"),
    (TASKS, CONFIG, [1], "`params` must be an object"),
])
def test_a_malformed_body_is_400_in_words(tasks, config, body, words):
    with pytest.raises(InvalidField, match=words.replace("[", r"\[").replace("(", r"\(")):
        labelstudio.parse_predict(tasks, config, body)


def test_too_many_keypoints_are_refused():
    with pytest.raises(InvalidPrompt, match="keypoints; the limit is"):
        labelstudio.parse_predict(TASKS, CONFIG, params(*[KEYPOINT] * 65))


# --- our regions ---

def result_of(mask: np.ndarray, url: str | None = None) -> Result:
    stored = StoredMask(url, 0.875, "m_" + "a" * 22, describe(mask, labelstudio.FORMATS))
    return Result([stored], mask.shape[1], mask.shape[0], cached=False)


def alpha_of(data_url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):]))).convert("RGBA"))


def test_each_mask_tag_gets_its_region_brush_rle_and_bitmask_png():
    rng = np.random.default_rng(1)
    mask = rng.random((30, 50)) > 0.6
    found = labelstudio.parse_predict(TASKS, BITMASK_CONFIG, params({**KEYPOINT, "original_width": 50,
                                                                     "original_height": 30}))
    backend = labelstudio.Backend(None, None, "sam2.1-hiera-tiny")
    body = json.loads(backend.answer(result_of(mask, "https://bucket/m.png"), found))
    (prediction,) = body["results"]
    assert prediction["score"] == 0.875 and prediction["model_version"] == "sam2.1-hiera-tiny"
    assert prediction["mask_url"] == "https://bucket/m.png"
    brush, bitmask = prediction["result"]
    assert brush["type"] == "brushlabels" and brush["from_name"] == "tag" and brush["to_name"] == "image"
    assert (brush["original_width"], brush["original_height"]) == (50, 30)
    assert brush["value"]["format"] == "rle" and brush["value"]["brushlabels"] == ["Banana"]
    assert brush["value"]["rle"] == brush_rle.encode(mask)
    assert bitmask["type"] == "bitmasklabels" and bitmask["value"]["bitmasklabels"] == ["Orange"]  # Banana: not its label
    rgba = alpha_of(bitmask["value"]["imageDataURL"])
    assert rgba.shape == (30, 50, 4)
    assert np.array_equal(rgba[..., 3] == 255, mask) and set(np.unique(rgba[..., 3])) == {0, 255}
    assert not rgba[..., :3].any()  # black on transparent, as Label Studio's editor writes bitmasks
    assert brush["id"] != bitmask["id"]


def rle_bits(data: list[int]) -> str:
    return "".join(f"{byte:08b}" for byte in data)


def test_the_brush_rle_header_and_records_follow_label_studios_format():
    mask = np.zeros((2, 3), bool)
    mask[1, 1:] = True  # pixels: 0 0 0 0 1 1 -> runs of 16 zeros, 8 of 255 (4 channels each)
    bits = rle_bits(brush_rle.encode(mask))
    assert int(bits[:32], 2) == 24 and int(bits[32:37], 2) == 7  # values; word size 8
    assert [int(bits[37 + 4 * i:41 + 4 * i], 2) + 1 for i in range(4)] == [3, 4, 8, 16]
    records = bits[53:]
    assert records[:15] == "1" + "01" + f"{15:04b}" + f"{0:08b}"  # a run of 16 zeros: 4-bit field
    assert records[15:29] == "1" + "00" + f"{7:03b}" + f"{255:08b}"  # a run of 8 x 255: 3-bit field
    assert set(records[29:]) == {"0"} and len(bits) % 8 == 0


def test_runs_longer_than_65536_values_are_cut_as_label_studio_cuts_them():
    mask = np.ones((200, 100), bool)  # 80,000 values of 255
    records = rle_bits(brush_rle.encode(mask))[53:]
    assert records[:27] == "1" + "11" + f"{65535:016b}" + f"{255:08b}"
    assert records[27:54] == "1" + "11" + f"{80000 - 65536 - 1:016b}" + f"{255:08b}"


# --- where a task's image is fetched from ---

class Recorder:
    def __init__(self):
        self.calls = []

    def get(self, address, headers=()):
        self.calls.append((str(address), list(headers)))
        return b"image bytes"


def images(url: str | None = "http://label-studio:8080", key: str | None = "ls-token") -> tuple[TaskImages, Recorder]:
    recorder = Recorder()
    sources = ImageSources(None, frozenset(), 1000)
    return TaskImages(sources, 1000, url, key, fetcher=recorder), recorder


@pytest.mark.parametrize("url, fetched", [
    ("/data/upload/1/photo.jpg", "http://label-studio:8080/data/upload/1/photo.jpg"),
    ("/data/local-files/?d=images/a%20b.jpg", "http://label-studio:8080/data/local-files/?d=images/a%20b.jpg"),
    ("http://label-studio:8080/data/upload/2/x.png", "http://label-studio:8080/data/upload/2/x.png"),
    ("/tasks/12/resolve/?fileuri=czM6Ly9iL2EucG5n", "http://label-studio:8080/tasks/12/resolve/?fileuri=czM6Ly9iL2EucG5n"),
    ("/projects/3/presign/?fileuri=x", "http://label-studio:8080/projects/3/presign/?fileuri=x"),
    ("/storage-data/uploaded/?filepath=upload/1/a.png", "http://label-studio:8080/storage-data/uploaded/?filepath=upload/1/a.png"),
    ("/data/upload/1/a..b.png", "http://label-studio:8080/data/upload/1/a..b.png"),
])
def test_label_studios_files_are_fetched_from_it_with_its_token(url, fetched):
    found, recorder = images()
    assert found.locate(url, "tasks[0].data.image")() == b"image bytes"
    assert recorder.calls == [(fetched, [(b"Authorization", b"Token ls-token")])]


def test_a_path_prefix_of_label_studio_url_is_kept():
    found, recorder = images("https://example.org/ls/")
    found.locate("/data/upload/1/a.jpg", "f")()
    assert recorder.calls[0][0] == "https://example.org/ls/data/upload/1/a.jpg"


@pytest.mark.parametrize("url, error, words", [
    ("http://label-studio:9999/data/upload/1/a.jpg", InvalidImageSource, "must be s3://bucket/key or https://"),
    ("//evil.example/a.jpg", InvalidImageSource, "must be s3://bucket/key or https://"),
    ("https://127.0.0.1/a.jpg", ForbiddenSource, "not a public address"),
    ("s3://private-bucket/a.jpg", ForbiddenSource, "S3_INPUT_BUCKETS"),
    ("/data/upload/1/a b.jpg", InvalidImageSource, "spaces"),
    (None, InvalidImageSource, "must be the URL of the task's image"),
])
def test_other_urls_follow_image_urls_rules_and_get_no_token(url, error, words):
    found, recorder = images()
    with pytest.raises(error, match=words):
        found.locate(url, "tasks[0].data.image")()
    assert recorder.calls == []


def test_without_label_studio_url_its_paths_say_what_to_set():
    found, _ = images(url=None, key=None)
    with pytest.raises(InvalidImageSource, match="set LABEL_STUDIO_URL"):
        found.locate("/data/upload/1/a.jpg", "tasks[0].data.image")


# --- the guard: the API key as basic auth's password, on Label Studio's routes ---

def basic(user: str, password: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode()))]


def test_label_studios_basic_auth_carries_the_api_key_as_its_password():
    guard = RequestGuard(APP, paths={"/segment"}, api_keys=["key-one"], max_upload_bytes=1000, basic_auth=True)
    assert exchange(guard, JSON + basic("anyone", "key-one"), [b"{}"]).status == 200
    assert exchange(guard, JSON + [(b"authorization", b"Bearer key-one")], [b"{}"]).status == 200
    for headers in (basic("key-one", "wrong"), [(b"authorization", b"Basic !!")], basic("", "")):
        refused = exchange(guard, JSON + headers, [b"{}"])
        assert refused.status == 401 and "password of basic auth" in refused.error()
        assert refused.headers[b"www-authenticate"] == b'Basic realm="sam2-api"'
    plain = RequestGuard(APP, paths={"/segment"}, api_keys=["key-one"], max_upload_bytes=1000)
    assert exchange(plain, JSON + basic("anyone", "key-one"), [b"{}"]).status == 401  # /segment: Bearer only


def test_label_studios_routes_have_their_guards():
    import service

    found = {}
    for middleware, options in service.SAM2API.middlewares:
        if middleware is RequestGuard:
            for path in options["paths"]:
                found[path] = options
    predict, webhook = found[labelstudio.PREDICT_ROUTE], found[labelstudio.WEBHOOK_ROUTE]
    assert found[labelstudio.SETUP_ROUTE] is predict and predict["basic_auth"] is True
    assert predict["api_keys"] == found["/segment"]["api_keys"]
    # a task with its annotations, not SAM2_MAX_UPLOAD_BYTES (64 MiB) of JSON: parsed, 6 million "{}" took the
    # server 589 MB for a 17 MB body
    limit = min(service.SETTINGS.sam2_max_upload_bytes, labelstudio.MAX_BODY_BYTES)
    assert predict["max_json_body_bytes"] == predict["max_upload_bytes"] == limit <= 16 * 1024**2
    answer = exchange(RequestGuard(APP, **{**predict, "paths": {"/segment"}}),
                      JSON + [(b"content-length", str(limit + 1).encode())], [b"{}"])
    assert answer.status == 413 and "16 MiB for Label Studio's calls" in answer.error()
    assert "api_keys" not in webhook and "max_json_body_bytes" not in webhook  # open, 1 MiB


def test_checking_a_config_of_thousands_of_tags_costs_one_pass_not_one_per_image():
    # ~8,000 images and ~8,000 mask tags, none pointing at an image: within MAX_CONFIG_BYTES, and
    # what a key holder could post to /setup over and over (seconds of CPU each when checked per image).
    count = 8000
    text = ("<View>" + "".join(f'<Image name="i{k}" value="$a"/>' for k in range(count))
            + "".join(f'<Brush name="b{k}" toName="z"/>' for k in range(count)) + "</View>")
    assert len(text.encode()) < MAX_CONFIG_BYTES
    config = parse_label_config(text, "schema")
    started = time.perf_counter()
    with pytest.raises(InvalidField, match="needs an <Image>"):
        config.check_usable("schema")
    assert time.perf_counter() - started < 0.5


def test_a_mask_of_a_million_runs_is_encoded_in_memory_near_its_answers_size():
    # A 2000 x 2000 checkerboard of 4-pixel squares: 1,000,000 runs, ~1.75 MB of brush RLE. Encoded
    # bit by bit in one go it took arrays of eight bytes an output bit (over 200 MB at once).
    rows, cols = np.indices((2000, 2000))
    mask = (rows // 4 + cols // 4) % 2 == 1
    tracemalloc.start()
    try:
        encoded = brush_rle.encode(mask)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 1_500_000 < len(encoded) < 2_000_000
    assert peak < 80 * 1024**2, f"{peak / 1024**2:.0f} MB"
    bits = rle_bits(encoded[:9])
    assert int(bits[:32], 2) == 4 * 2000 * 2000
    assert bits[53:53 + 15] == "1" + "01" + f"{15:04b}" + f"{0:08b}"  # 4 pixels off: a run of 16 zeros


def decoded_values(data: list[int]) -> np.ndarray:
    """The values of a brush RLE, read record by record as thi.ng's rle-pack reads them."""
    bits = rle_bits(data)
    count, word = int(bits[:32], 2), int(bits[32:37], 2) + 1
    fields = [int(bits[37 + 4 * i:41 + 4 * i], 2) + 1 for i in range(4)]
    values, at = [], 53
    while len(values) < count:
        run, field = bits[at] == "1", fields[int(bits[at + 1:at + 3], 2)]
        length = int(bits[at + 3:at + 3 + field], 2) + 1
        at += 3 + field
        if run:
            values += [int(bits[at:at + word], 2)] * length
            at += word
        else:
            values += [int(bits[at + word * i:at + word * (i + 1)], 2) for i in range(length)]
            at += word * length
    assert set(bits[at:]) <= {"0"}
    return np.asarray(values)


def test_a_mask_of_more_runs_than_one_chunk_reads_back_exactly():
    rng = np.random.default_rng(3)
    mask = rng.random((300, 700)) > 0.5  # ~105,000 runs: more than one chunk of brush_rle.CHUNK
    mask[:40] = True  # and runs longer than 65,536 values
    assert np.count_nonzero(mask[:, 1:] != mask[:, :-1]) > brush_rle.CHUNK
    values = decoded_values(brush_rle.encode(mask)).reshape(300, 700, 4)
    assert all(np.array_equal(values[..., c] == 255, mask) for c in range(4))
    assert set(np.unique(values)) == {0, 255}


def test_many_mask_tags_share_one_encoding_and_the_answer_keeps_to_the_response_limit():
    mask = np.random.default_rng(2).random((120, 200)) > 0.5
    tags = "".join(f'<BrushLabels name="b{k}" toName="image"/><BitmaskLabels name="m{k}" toName="image"/>'
                   for k in range(40))
    config = CONFIG.replace("</View>\n", tags + "</View>\n")
    found = labelstudio.parse_predict(TASKS, config, params({**KEYPOINT, "original_width": 200, "original_height": 120}))
    assert len(found.outputs) == 81
    rle, data_url = brush_rle.encode(mask), labelstudio.bitmask_data_url(mask)
    needed = 41 * 4 * len(rle) + 40 * len(data_url)
    body = labelstudio.Backend(None, None, "v", max_response_bytes=needed).answer(result_of(mask), found)
    regions = json.loads(body)["results"][0]["result"]
    assert len(regions) == 81 and len(body) <= needed + 81 * 400
    assert all(r["value"]["rle"] == rle for r in regions if r["type"] == "brushlabels")
    assert all(r["value"]["imageDataURL"] == data_url for r in regions if r["type"] == "bitmasklabels")
    with pytest.raises(ResponseTooLarge, match=r"81 mask tags.*SAM2_MAX_RESPONSE_BYTES"):
        labelstudio.Backend(None, None, "v", max_response_bytes=needed - 1).answer(result_of(mask), found)


@pytest.mark.parametrize("url", [
    "/api/projects/1/export?exportType=JSON",  # Label Studio's API, with its token: not a task's file
    "/api/users/",
    "/data/upload/../../api/projects",
    "/data/upload/%2e%2e/%2E%2E/api/projects",
    "/data/upload/1/..%2F..%2F..%2Fapi/projects",
    "/data/upload/1/..\\..\\api/projects",
    "/data/upload/./1/a.png",
    "/tasks/1/resolve/../../api/tasks/1",
    "/tasks/x/resolve/?fileuri=a",
    "/user/login/",
    "http://label-studio:8080/api/projects",
    "http://label-studio:8080/data/upload/../../api/projects",
])
def test_label_studios_token_goes_to_its_file_routes_only(url):
    found, recorder = images()
    with pytest.raises(ForbiddenSource, match="LABEL_STUDIO_API_KEY goes to those routes only"):
        found.locate(url, "tasks[0].data.image")()
    assert recorder.calls == []


def test_below_a_path_prefix_only_its_file_routes_get_the_token():
    found, recorder = images("https://example.org/ls/")
    found.locate("https://example.org/ls/data/upload/1/a.jpg", "f")()
    assert recorder.calls[0][0] == "https://example.org/ls/data/upload/1/a.jpg"
    for url in ("https://example.org/data/upload/1/a.jpg", "https://example.org/lsx/data/upload/1/a.jpg",
                "/../data/upload/1/a.jpg"):
        with pytest.raises(ForbiddenSource):
            found.locate(url, "f")
    assert len(recorder.calls) == 1


def test_the_open_webhook_echoes_an_event_name_and_nothing_longer():
    assert json.loads(labelstudio.Backend.webhook("ANNOTATION_CREATED"))["action"] == "ANNOTATION_CREATED"
    for action in ("A" * 900_000, "<script>alert(1)</script>", "", None, 5, "x" * 65):
        with pytest.raises(InvalidField, match="Label Studio's event name") as refused:
            labelstudio.Backend.webhook(action)
        assert len(str(refused.value)) < 300


def test_large_configs_are_not_kept_parsed():
    # A key holder's 64 different configs near MAX_CONFIG_BYTES, kept parsed, held 164 MB in each API worker.
    def config(seed: int) -> str:
        return ("<View>" + "".join(f'<Image name="i{seed}_{k}" value="$a{k}"/>' for k in range(7000))
                + "".join(f'<Brush name="b{k}" toName="z{k}"><Label value="l{k}"/></Brush>' for k in range(3500))
                + "</View>")
    texts = [config(seed) for seed in range(8)]
    tracemalloc.start()
    try:
        for text in texts:
            parse_label_config(text, "schema")
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < 2 * 1024**2, f"{retained / 1024**2:.0f} MB"
    assert parse_label_config(CONFIG, "label_config") is parse_label_config(CONFIG, "label_config")  # small: kept


class Refusing:
    def __init__(self, message):
        self.message = message

    def get(self, address, headers=()):
        raise InvalidImageSource(self.message.format(address=address, host=address.host))


@pytest.mark.parametrize("message", ["{address} answered 404", "{address} could not be fetched: ConnectError",
                                     "the host {host!r} does not resolve"])
def test_label_studios_errors_do_not_show_its_internal_address(message):
    found = TaskImages(ImageSources(None, frozenset(), 1000), 1000, "http://ls-internal.corp:8080", "ls-token",
                       fetcher=Refusing(message))
    with pytest.raises(InvalidImageSource) as refused:
        found.locate("/data/upload/1/gone.png", "tasks[0].data.image")()
    said = str(refused.value)
    assert "ls-internal" not in said and "8080" not in said and "ls-token" not in said
    assert "LABEL_STUDIO_URL" in said and "LABEL_STUDIO_API_KEY" in said
