"""CVAT's interactor call: its body as our prompt, our mask as CVAT reads it, the guard that lets
its base64 image in on its route only, and the nuclio function that forwards it (deploy/cvat)."""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from sam2_api.api import cvat
from sam2_api.api.guard import RequestGuard
from sam2_api.api.segment import Result, StoredMask
from sam2_api.errors import ImageTooLarge, InvalidImage, InvalidPrompt, ResponseTooLarge
from sam2_api.maskformats import describe
from tests.conftest import REPO
from tests.support.cvat import cvat_payload, cvat_reads
from tests.unit.test_guard import APP, JSON, exchange

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
LIMIT = 1000


def parse(**fields):
    body = {**cvat_payload(PNG, [[10, 20]], []), **fields}
    return cvat.parse_request(body["image"], body["pos_points"], body["neg_points"], body["obj_bbox"], LIMIT)


# --- the body as our prompt ---

def test_positive_then_negative_points_become_labels_one_then_zero():
    request = parse(pos_points=[[10, 20], [30.5, 40]], neg_points=[[5, 6]])
    assert request.image == PNG
    assert request.prompt.points == [[10, 20], [30.5, 40], [5, 6]] and request.prompt.labels == [1, 1, 0]
    assert request.prompt.box is None and request.prompt.wants_multimask is False


def test_a_lone_click_gets_segments_default_the_best_of_three():
    assert parse().prompt.wants_multimask is True


@pytest.mark.parametrize("obj_bbox", [[[10, 20], [110, 220]], [[110, 220], [10, 20]], [[110, 20], [10, 220]],
                                      [10, 20, 110, 220]])
def test_obj_bbox_corners_in_any_order_become_the_box(obj_bbox):
    request = parse(obj_bbox=obj_bbox, pos_points=[], neg_points=[])
    assert request.prompt.box == [10, 20, 110, 220] and request.prompt.points is None


def test_obj_bbox_null_is_no_box_and_a_box_with_clicks_keeps_both():
    assert parse(obj_bbox=None).prompt.box is None
    both = parse(obj_bbox=[[0, 0], [50, 50]], neg_points=[[1, 1]])
    assert both.prompt.box == [0, 0, 50, 50] and both.prompt.labels == [1, 0]


@pytest.mark.parametrize("fields, words", [
    ({"pos_points": [], "neg_points": []}, "send at least one point in `pos_points`, or a box in `obj_bbox`"),
    ({"pos_points": [[1, 2, 3]]}, "`pos_points` must be a list of [x, y] pairs"),
    ({"pos_points": [[1, True]]}, "`pos_points` must be a list of [x, y] pairs"),
    ({"neg_points": "[[1, 2]]"}, "`neg_points` must be a list of [x, y] pairs"),
    ({"neg_points": [[float("nan"), 2]]}, "`neg_points` must be a list of [x, y] pairs"),
    ({"obj_bbox": [[1, 2]]}, "`obj_bbox` must be [[x1, y1], [x2, y2]] in pixels, or null"),
    ({"obj_bbox": [[1, 2], [1, 9]]}, "invalid prompt: `box` must be [x1, y1, x2, y2] with x2 > x1"),
    ({"pos_points": [[1, 1]] * 40, "neg_points": [[2, 2]] * 25}, "`pos_points` and `neg_points` hold 65 points"),
])
def test_a_malformed_prompt_is_400_naming_cvats_field(fields, words):
    with pytest.raises(InvalidPrompt) as caught:
        parse(**fields)
    assert caught.value.status == 400 and str(caught.value).startswith(words)


@pytest.mark.parametrize("image, words", [
    (None, "send the frame as `image`"),
    (b"bytes", "`image` must be a string of base64"),
    ("not base64!", "`image` is not valid base64"),
    ("iVBORw0KGgo", "`image` is not valid base64"),  # unpadded
    ("", "`image` is empty"),
])
def test_an_image_that_is_not_base64_is_400(image, words):
    with pytest.raises(InvalidImage) as caught:
        parse(image=image)
    assert caught.value.status == 400 and str(caught.value).startswith(words)


def test_a_data_url_prefix_is_allowed():
    assert parse(image="data:image/png;base64," + base64.b64encode(PNG).decode()).image == PNG


def test_the_decoded_size_counts_against_the_upload_limit_before_and_after_decoding():
    assert len(parse(image=base64.b64encode(b"x" * LIMIT).decode()).image) == LIMIT
    for size in (LIMIT + 1, 10 * LIMIT):
        with pytest.raises(ImageTooLarge) as caught:
            parse(image=base64.b64encode(b"x" * size).decode())
        assert caught.value.status == 413 and str(caught.value) == f"the image is over {LIMIT} bytes (SAM2_MAX_UPLOAD_BYTES)"
    assert cvat.body_limit(LIMIT) == len(base64.b64encode(b"x" * LIMIT)) + cvat.POINTS_BYTES


# --- our mask as CVAT reads it ---

def result_of(mask: np.ndarray, url: str | None = None) -> Result:
    stored = StoredMask(url, 0.9, "m_" + "a" * 22, describe(mask, cvat.FORMATS))
    return Result([stored], mask.shape[1], mask.shape[0], cached=False)


def test_the_mask_comes_back_cropped_to_its_bounds_and_cvat_reads_the_same_pixels():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:30, 12:50] = rng.random((25, 38)) > 0.4
    body = json.loads(cvat.response_body(result_of(mask)))
    assert set(body) == {"mask", "bounds"}
    ys, xs = np.nonzero(mask)
    assert body["bounds"] == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert len(body["mask"]) == ys.max() - ys.min() + 1 and len(body["mask"][0]) == xs.max() - xs.min() + 1
    assert {v for row in body["mask"] for v in row} == {0, 1}
    assert np.array_equal(cvat_reads(body, 60, 40), mask)


def test_a_full_frame_and_a_single_pixel_mask_read_back_exactly():
    single = np.zeros((3, 9), dtype=bool)
    single[2, 8] = True
    for mask in (np.ones((7, 9), dtype=bool), single):
        height, width = mask.shape
        assert np.array_equal(cvat_reads(json.loads(cvat.response_body(result_of(mask))), width, height), mask)


def test_an_empty_mask_is_one_zero_pixel_with_no_polygon():
    body = json.loads(cvat.response_body(result_of(np.zeros((4, 5), dtype=bool))))
    assert body == {"mask": [[0]], "bounds": [0, 0, 0, 0], "points": []}
    assert not cvat_reads(body, 5, 4).any()


def test_mask_url_is_added_when_s3_stored_the_mask():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 1] = True
    body = json.loads(cvat.response_body(result_of(mask, "https://bucket.example/m.png")))
    assert body == {"mask": [[1]], "bounds": [1, 1, 1, 1], "mask_url": "https://bucket.example/m.png"}


def test_json_rows_writes_what_json_dumps_would():
    mask = np.random.default_rng(1).random((5, 7)) > 0.5
    assert cvat.json_rows(mask) == json.dumps(mask.astype(int).tolist(), separators=(",", ":")).encode()


# --- the guard: a base64 image in JSON passes on CVAT's route only ---

def guards() -> dict[str, dict]:
    import service

    found = {}
    for middleware, options in service.SAM2API.middlewares:
        if middleware is RequestGuard:
            for path in options["paths"]:
                found[path] = options
    return found


def test_cvats_route_has_a_guard_of_its_own_with_the_same_keys():
    found = guards()
    assert cvat.ROUTE in found and found[cvat.ROUTE]["paths"] == {cvat.ROUTE}
    assert found[cvat.ROUTE]["api_keys"] == found["/segment"]["api_keys"]
    assert found[cvat.ROUTE]["file_fields"] == ()


def test_a_base64_image_in_json_passes_cvats_guard_and_not_segments():
    found = guards()
    body = json.dumps(cvat_payload(b"x" * 1_500_000, [[1, 2]], [])).encode()  # over 1 MiB: a real frame
    as_cvat = {**found[cvat.ROUTE], "paths": {"/segment"}}  # APP answers /segment
    assert exchange(RequestGuard(APP, **as_cvat), JSON, [body[:1000], body[1000:]]).status == 200
    small = json.dumps(cvat_payload(b"x" * 10, [[1, 2]], [])).encode()
    answer = exchange(RequestGuard(APP, **found["/segment"]), JSON, [small])
    assert answer.status == 400 and "`image` is a file and cannot be sent in a JSON body" in answer.error()


def test_cvats_guard_refuses_a_body_over_the_image_limit_in_base64():
    options = {**guards()[cvat.ROUTE], "paths": {"/segment"}, "max_upload_bytes": cvat.body_limit(LIMIT),
               "max_json_body_bytes": cvat.body_limit(LIMIT)}
    too_large = cvat.body_limit(LIMIT) + 1
    answer = exchange(RequestGuard(APP, **options), JSON + [(b"content-length", str(too_large).encode())], [b"{}"])
    assert answer.status == 413 and "SAM2_MAX_UPLOAD_BYTES, in base64" in answer.error()


def test_cvats_guard_refuses_millions_of_points_before_parsing_them():
    options = {**guards()[cvat.ROUTE], "paths": {"/segment"}}
    most = {"image": "", "pos_points": [[1.5, 2.5]] * 64, "neg_points": [[3, 4]] * 64, "obj_bbox": [[1, 2], [3, 4]]}
    body = json.dumps(cvat_payload(b"x" * 1_500_000, most["pos_points"], most["neg_points"])).encode()
    assert exchange(RequestGuard(APP, **options), JSON, [body]).status == 200  # a frame and the most points
    for flood in ('{"image":"eA==","pos_points":[' + ",".join(["[1.5,2.5]"] * 100_000) + "]}",
                  '{"image":"eA==","obj_bbox":[' + ",".join(["1.5"] * 100_000) + "]}"):
        answer = exchange(RequestGuard(APP, **options), JSON, [flood.encode()])
        assert answer.status == 413 and f"more than {cvat.MAX_JSON_ITEMS} values" in answer.error()


# --- deploy/cvat/main.py, the nuclio function, with CVAT's context and event ---

def nuclio_main():
    spec = importlib.util.spec_from_file_location("cvat_nuclio_main", REPO / "deploy" / "cvat" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeContext:
    """What nuclio hands a Python handler: ``Response`` and ``logger``."""

    class Response(SimpleNamespace):
        pass

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.logger = SimpleNamespace(info=lambda *a: None, warn=self.warnings.append)


@pytest.fixture
def service_stub():
    """A server that records what it is sent and answers ``answer[0]`` (status, body)."""
    got, answer = [], [(200, b'{"mask": [[1]], "bounds": [0, 0, 0, 0]}')]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.path, dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            status, body = answer[0]
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", got, answer
    server.shutdown()


@pytest.mark.parametrize("decoded", [True, False], ids=["json-decoded", "bytes"])
def test_the_nuclio_function_forwards_cvats_body_with_the_key_and_returns_the_answer(service_stub, monkeypatch,
                                                                                      decoded):
    url, got, _ = service_stub
    monkeypatch.setenv("SAM2_API_URL", url + "/")
    monkeypatch.setenv("SAM2_API_KEY", "k-123")
    payload = cvat_payload(PNG, [[1, 2]], [[3, 4]], None)
    event = SimpleNamespace(body=payload if decoded else json.dumps(payload).encode())
    response = nuclio_main().handler(FakeContext(), event)
    assert (response.status_code, response.content_type) == (200, "application/json")
    assert json.loads(response.body) == {"mask": [[1]], "bounds": [0, 0, 0, 0]}
    path, headers, body = got[0]
    assert path == "/cvat/interactor" and json.loads(body) == payload
    assert headers["Authorization"] == "Bearer k-123" and headers["Content-Type"] == "application/json"


def test_the_nuclio_function_passes_errors_on_and_sends_no_key_when_none_is_set(service_stub, monkeypatch):
    url, got, answer = service_stub
    monkeypatch.setenv("SAM2_API_URL", url)
    monkeypatch.delenv("SAM2_API_KEY", raising=False)
    answer[0] = (415, b'{"error": "not an image"}')
    response = nuclio_main().handler(FakeContext(), SimpleNamespace(body={"image": ""}))
    assert response.status_code == 415 and json.loads(response.body) == {"error": "not an image"}
    assert "Authorization" not in got[0][1]


def test_the_nuclio_function_answers_502_when_the_service_is_unreachable(monkeypatch):
    monkeypatch.setenv("SAM2_API_URL", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("SAM2_API_KEY", "secret-key")
    context = FakeContext()
    response = nuclio_main().handler(context, SimpleNamespace(body={}))
    assert response.status_code == 502 and "did not answer" in json.loads(response.body)["error"]
    assert context.warnings and "secret-key" not in context.warnings[0] + response.body


def test_the_function_yaml_is_an_interactor_cvat_lists():
    import yaml

    config = yaml.safe_load((REPO / "deploy" / "cvat" / "function.yaml").read_text())
    annotations = config["metadata"]["annotations"]
    assert annotations["type"] == "interactor" and int(annotations["version"]) >= 2  # MIN_SUPPORTED_INTERACTOR_VERSION
    assert config["metadata"]["name"] != "pth-facebookresearch-sam-vit-h"  # cvat-ui/plugins/sam's model id
    assert config["spec"]["handler"] == "main:handler"
    assert int(annotations["min_pos_points"]) == 0 and annotations["startswith_box_optional"] is True


def test_the_rows_keep_to_the_response_limit_as_segments_formats_do():
    mask = np.zeros((50, 80), dtype=bool)
    mask[10:40, 5:65] = True  # 60 x 30 pixels within its bounds: 30 rows of "[v,...,v]," and the brackets
    size = 30 * (2 * 60 + 2) + 1
    body = cvat.response_body(result_of(mask), max_bytes=size + len(b',"bounds":[5,10,64,39]}') + len(b'{"mask":'))
    assert len(json.loads(body)["mask"]) == 30
    with pytest.raises(ResponseTooLarge, match=r"60x30 pixels.*SAM2_MAX_RESPONSE_BYTES"):
        cvat.response_body(result_of(mask), max_bytes=size - 1)
    # the default: a frame-filling mask of 16.8 megapixels is over SAM2_MAX_RESPONSE_BYTES' 32 MiB
    with pytest.raises(ResponseTooLarge):
        cvat.response_body(result_of(np.ones((4100, 4100), dtype=bool)))
