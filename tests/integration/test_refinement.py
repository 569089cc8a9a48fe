"""Refinement, candidates and mask formats over HTTP against `bentoml serve`: chained clicks give
exactly SAM2ImagePredictor's masks fed its previous logits; candidates are its three masks; RLE and
polygons give back the PNG's pixels; every bad field gets a 4xx that says what is wrong."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_api.maskformats import rasterise
from sam2_api.maskinput import logits, low_res_mask
from tests.conftest import upright_rgb
from tests.integration.test_segment_api import fetch_mask, post
from tests.unit.test_maskformats import shoelace

# Clicks added one by one, as a user would: [x, y], label.
SESSIONS = {
    "chelsea.png": [([225, 150], 1), ([300, 100], 1), ([50, 50], 0)],
    "rocket.jpg": [([320, 200], 1), ([100, 50], 0), ([330, 100], 1)],
}


def predicted(predictor, points, labels, mask_input=None, multimask_output=False):
    """The predictor's masks (bool), scores and low-res logits, best first."""
    masks, scores, low_res = predictor.predict(
        point_coords=np.asarray(points, dtype=np.float32), point_labels=np.asarray(labels),
        mask_input=None if mask_input is None else mask_input[None], multimask_output=multimask_output)
    order = np.argsort(-scores, kind="stable")
    return masks[order] > 0, scores[order], low_res[order]


def post_json(server, **fields) -> httpx.Response:
    return httpx.post(f"{server.url}/segment", json=fields, timeout=120)


@pytest.mark.parametrize("name", SESSIONS)
def test_each_click_refines_the_last_answer_exactly_as_the_predictor_does(server, reference_predictor, test_images, name):
    """Click 1 uploads the image under an image_id; clicks 2 and 3 are JSON requests naming it,
    with every click so far and the previous answer's mask_id (docs/API.md's curl session)."""
    image = upright_rgb(test_images / name)
    predictor = reference_predictor(image)
    points, labels = [p for p, _ in SESSIONS[name]], [label for _, label in SESSIONS[name]]
    response = post(server, (test_images / name).read_bytes(), name, image_id=f"refine-{name}", points=points[:1])
    previous = None
    for count in range(1, 4):
        if count > 1:
            response = post_json(server, image_id=f"refine-{name}", points=points[:count], labels=labels[:count],
                                 previous_mask_id=body["mask_id"])
        assert response.status_code == 200, response.text
        body = response.json()
        masks, scores, low_res = predicted(predictor, points[:count], labels[:count], previous, count == 1)
        served = fetch_mask(body["mask_url"]) == 255
        assert np.array_equal(served, masks[0]), f"click {count}"
        assert body["score"] == pytest.approx(float(scores[0]), abs=1e-6)
        if count > 1:
            unchained, _, _ = predicted(predictor, points[:count], labels[:count])
            assert not np.array_equal(served, unchained[0]), "the previous mask made no difference: proves nothing"
        previous = low_res[0]


def test_candidates_are_the_predictors_three_masks_best_first(server, reference_predictor, test_images):
    response = post(server, (test_images / "coffee.png").read_bytes(), points=[[300, 200]], candidates=True)
    assert response.status_code == 200, response.text
    body = response.json()
    predictor = reference_predictor(upright_rgb(test_images / "coffee.png"))
    masks, scores, _ = predicted(predictor, [[300, 200]], [1], multimask_output=True)
    candidates = body["candidates"]
    assert len(candidates) == 3 and len({c["mask_id"] for c in candidates}) == 3
    assert {k: candidates[0][k] for k in ("mask_url", "score", "mask_id", "bbox", "area")} == \
        {k: body[k] for k in ("mask_url", "score", "mask_id", "bbox", "area")}
    for candidate, mask, score in zip(candidates, masks, scores):
        assert np.array_equal(fetch_mask(candidate["mask_url"]) == 255, mask)
        assert candidate["score"] == pytest.approx(float(score), abs=1e-6)
    # A candidate other than the best is refined as any mask is.
    refined = post(server, (test_images / "coffee.png").read_bytes(), points=[[300, 200], [200, 150]],
                   previous_mask_id=candidates[1]["mask_id"])
    assert refined.status_code == 200, refined.text


def test_steps_in_one_request_equal_the_chain_of_separate_requests(server, test_images):
    """A lone click whose second candidate is chosen, a background click refining it, then a third
    click: as three requests (each naming the last answer's mask_id), and as one request carrying
    the first two as `steps`, in a multipart form and in a JSON body: the same stored PNG."""
    data = (test_images / "rocket.jpg").read_bytes()
    first = {"points": [[320, 200]], "candidates": True}
    second = {"points": [[320, 200], [100, 50]], "labels": [1, 0]}
    last = {"points": [[320, 200], [100, 50], [330, 100]], "labels": [1, 0, 1]}
    picked = post(server, data, "rocket.jpg", image_id="steps-rocket", **first).json()["candidates"][1]
    refined = post_json(server, image_id="steps-rocket", **second, previous_mask_id=picked["mask_id"]).json()
    chain = post_json(server, image_id="steps-rocket", **last, previous_mask_id=refined["mask_id"]).json()
    steps = [{**first, "chosen": 1}, second]
    as_form = post(server, data, "rocket.jpg", **last, steps=steps, formats=["rle"])  # by content hash, no image_id
    as_json = post_json(server, image_id="steps-rocket", **last, steps=steps)
    png = httpx.get(chain["mask_url"], timeout=10).content
    for response in (as_form, as_json):
        assert response.status_code == 200, response.text
        body = response.json()
        assert httpx.get(body["mask_url"], timeout=10).content == png and body["mask_url"] != chain["mask_url"]
        assert np.array_equal(fetch_mask(body["mask_url"]), fetch_mask(chain["mask_url"]))
        assert {k: body[k] for k in ("score", "bbox", "area", "width", "height")} == \
            {k: chain[k] for k in ("score", "bbox", "area", "width", "height")}
        assert "candidates" not in body  # the last prompt's own answer only
    assert set(as_form.json()) >= {"rle"} and 0 < chain["area"] < chain["width"] * chain["height"]
    best = post_json(server, image_id="steps-rocket", **last, steps=[first, second]).json()
    assert httpx.get(best["mask_url"], timeout=10).content != png, "the chosen candidate made no difference"


def parts_and_holes(polygons: list[dict]) -> tuple[int, int]:
    return len(polygons), sum(len(part["holes"]) for part in polygons)


def test_rle_and_polygons_give_back_the_pngs_pixels(server, test_images):
    """Random weights make speckled masks: several parts and holes, which the test checks it met."""
    cases = [("chelsea.png", {"points": [[225, 150]]}), ("coffee.png", {"box": [150, 50, 450, 350]}),
             ("astronaut.png", {"points": [[200, 150], [100, 300]], "labels": [1, 0]})]
    met = []
    for name, prompt in cases:
        response = post(server, (test_images / name).read_bytes(), name, formats=["rle", "polygons"], **prompt)
        assert response.status_code == 200, response.text
        body = response.json()
        png = fetch_mask(body["mask_url"]) == 255
        rle = body["rle"]
        assert rle["size"] == [body["height"], body["width"]]
        assert np.array_equal(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == 1, png)
        assert np.array_equal(rasterise(body["polygons"], *png.shape), png), name
        # Pixel edges: every ring a real polygon (4 corners at least), their areas the pixel count.
        rings = [np.array(ring) for part in body["polygons"] for ring in [part["exterior"], *part["holes"]]]
        assert min(len(ring) for ring in rings) >= 4 and sum(map(shoelace, rings)) == png.sum(), name
        rows, cols = np.nonzero(png)
        assert body["bbox"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] and body["area"] == png.sum()
        met.append(parts_and_holes(body["polygons"]))
    assert max(parts for parts, _ in met) > 1 and max(holes for _, holes in met) > 0, met

    simple = post(server, (test_images / "coffee.png").read_bytes(), box=[150, 50, 450, 350], formats="polygons",
                  polygon_tolerance=2).json()
    exact = post(server, (test_images / "coffee.png").read_bytes(), box=[150, 50, 450, 350], formats="polygons").json()
    png = fetch_mask(simple["mask_url"]) == 255
    vertices = [sum(len(p["exterior"]) + sum(map(len, p["holes"])) for p in b["polygons"]) for b in (simple, exact)]
    assert vertices[0] < vertices[1]
    assert np.count_nonzero(rasterise(simple["polygons"], *png.shape) != png) < 0.1 * png.sum()
    assert "rle" not in simple and "candidates" not in simple  # not asked for: left out


def test_segment_objects_refines_each_object_and_describes_each_mask(server, reference_predictor, test_images):
    data = (test_images / "chelsea.png").read_bytes()
    first = post(server, data, route="/segment_objects", formats=["rle"],
                 objects=[{"points": [[225, 150]]}, {"box": [20, 20, 200, 200]}]).json()
    objects = first["objects"]
    assert all(set(o) == {"mask_url", "score", "mask_id", "bbox", "area", "rle"} for o in objects)
    refined = post(server, data, route="/segment_objects", objects=[
        {"points": [[225, 150], [300, 100]], "previous_mask_id": objects[0]["mask_id"]},
        {"box": [20, 20, 200, 200], "points": [[100, 100]], "previous_mask_id": objects[1]["mask_id"],
         "candidates": True},
    ]).json()["objects"]
    predictor = reference_predictor(upright_rgb(test_images / "chelsea.png"))
    _, _, low_res = predicted(predictor, [[225, 150]], [1], multimask_output=True)
    masks, _, _ = predicted(predictor, [[225, 150], [300, 100]], [1, 1], low_res[0])
    assert np.array_equal(fetch_mask(refined[0]["mask_url"]) == 255, masks[0])
    assert len(refined[1]["candidates"]) == 3 and "candidates" not in refined[0]


def test_a_mask_file_starts_the_refinement(server, reference_predictor, test_images):
    """A mask made elsewhere (here: a rectangle, as 1-bit PNG of another size) as mask_input."""
    image = upright_rgb(test_images / "chelsea.png")
    drawn = Image.new("1", (902, 600))  # twice the image's size: stretched to it
    drawn.paste(1, (240, 120, 660, 480))
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    files = {"image": ("cat.png", (test_images / "chelsea.png").read_bytes()), "mask_input": ("start.png", buffer.getvalue())}
    response = httpx.post(f"{server.url}/segment", files=files, data={"points": "[[225, 150]]"}, timeout=120)
    assert response.status_code == 200, response.text
    predictor = reference_predictor(image)
    mask_input = logits(low_res_mask(buffer.getvalue(), 10**8, 16384), 10.0)  # SAM2_MASK_INPUT_LOGIT's default
    masks, scores, _ = predicted(predictor, [[225, 150]], [1], mask_input, multimask_output=True)
    assert np.array_equal(fetch_mask(response.json()["mask_url"]) == 255, masks[0])


def test_without_s3_rle_and_polygons_still_come_back(server_without_s3, test_images):
    response = post(server_without_s3, (test_images / "chelsea.png").read_bytes(), box=[100, 50, 300, 250],
                    formats=["rle", "polygons"])
    body = response.json()
    assert response.status_code == 200 and body["mask_url"] is None
    mask = coco_mask.decode({"size": body["rle"]["size"], "counts": body["rle"]["counts"].encode()}) == 1
    assert np.array_equal(rasterise(body["polygons"], *mask.shape), mask) and body["area"] == mask.sum() > 0


def bad_mask(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (40, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_FIELDS = [
    ("malformed previous_mask_id", {"previous_mask_id": "not-an-id"}, None, 400,
     "`previous_mask_id` must be the `mask_id` of an earlier response"),
    ("unknown previous_mask_id", {"previous_mask_id": "m_" + "Q" * 22}, None, 404,
     "is not known here (never issued to you, or evicted): send the request again without it"),
    ("mask_input not an image", {}, b"just text", 415, "`mask_input`: the file is not an image"),
    ("mask_input in colour", {}, bad_mask("RGB"), 400, "must be a single-channel image"),
    ("mask_input and previous_mask_id", {"previous_mask_id": "m_" + "Q" * 22}, bad_mask("L"), 400, "not both"),
    ("unknown format", {"formats": ["rle", "geojson"]}, None, 400, '`formats` must be a list of "rle" and/or "polygons"'),
    ("negative tolerance", {"polygon_tolerance": -1}, None, 400, "`polygon_tolerance` must be a number of pixels ≥ 0"),
    ("candidates without multimask", {"candidates": True, "multimask_output": False}, None, 400,
     "`candidates` are SAM 2's three masks"),
    ("steps beside previous_mask_id", {"previous_mask_id": "m_" + "Q" * 22, "steps": [{"points": [[225, 150]]}]},
     None, 400, "send `previous_mask_id` on the first of `steps`, not beside them"),
    ("steps with mask_input", {"steps": [{"points": [[225, 150]]}]}, bad_mask("L"), 400,
     "`mask_input` does not go with `steps`"),
    ("a later step's previous_mask_id",
     {"steps": [{"points": [[225, 150]]}, {"points": [[225, 150]], "previous_mask_id": "m_" + "Q" * 22}]}, None, 400,
     "steps[1]: only the first step may have a `previous_mask_id`"),
    ("steps not a list", {"steps": {"points": [[225, 150]]}}, None, 400, "`steps` must be a list of at most 32"),
    ("a step's chosen without candidates", {"steps": [{"points": [[225, 150]], "chosen": 2}]}, None, 400,
     "steps[0]: `chosen` must be 0 (the step's best mask) unless the step has `candidates`: true"),
]


@pytest.mark.parametrize("case, fields, mask_file, status, words", BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
def test_bad_refinement_fields_get_a_clear_4xx(server, test_images, case, fields, mask_file, status, words):
    files = {"image": ("cat.png", (test_images / "chelsea.png").read_bytes())}
    if mask_file is not None:
        files["mask_input"] = ("mask.png", mask_file)
    form = {"points": "[[225, 150]]", **{name: json.dumps(value) for name, value in fields.items()}}
    response = httpx.post(f"{server.url}/segment", files=files, data=form, timeout=120)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_mask_id_of_another_image_is_a_400(server, test_images):
    first = post(server, (test_images / "chelsea.png").read_bytes(), points=[[225, 150]]).json()
    response = post(server, (test_images / "coffee.png").read_bytes(), points=[[300, 200], [310, 210]],
                    previous_mask_id=first["mask_id"])
    assert response.status_code == 400
    assert "belongs to a mask of another image" in response.json()["error"]
