"""The click-to-segment page in a real headless Chromium, against a real server and S3: the pixels
it draws (read back from screenshots of the canvas), the requests it sends, the masks it shows."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sam2_api.cli.overlay import mask_edge
from tests.conftest import upright_rgb
from tests.integration.test_segment_api import fetch_mask

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="no Chromium here (Debian: apt-get install chromium); .ci/run installs it")
# Headless as root, and quiet: this machine has no network beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
VIEWPORT = {"width": 1280, "height": 900}

# The page's look (app.js, LOOK), in RGB.
MASK = np.array([30, 144, 255])
MASK_KEEP = 128  # the fill keeps 128/255 of the image under it
OBJECT, BACKGROUND, BOX = np.array([34, 197, 94]), np.array([239, 68, 68]), np.array([250, 204, 21])
MARKER_REACH = 6 + 1 + 1  # radius + half the white ring + antialiasing, in screen pixels


@pytest.fixture
def page(tmp_path):
    """A page in a fresh browser. Anything the pages' Content-Security-Policy refused fails the test:
    the policy must allow all that the pages do."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        refused = []
        page.on("console", lambda message: refused.append(message.text)
                if "Content Security Policy" in message.text else None)
        yield page
        browser.close()
    assert not refused, refused


def open_image(page, server, image: Path) -> dict:
    """Loads the page and the image; returns the canvas's box on screen (CSS pixels)."""
    page.goto(f"{server.url}/ui/?decode=server")  # server clicks (test_ui_browser.py: decoded in the browser)
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#stage:not([hidden])")
    return page.locator("#canvas").bounding_box()


def segment_by(page, action) -> dict:
    """Runs ``action`` (a click, a drag), waits until the page has drawn the answer; returns it."""
    with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
        action()
    body = answer.value.json()
    page.wait_for_function("url => document.getElementById('mask-link').href === url", arg=body["mask_url"],
                           timeout=60_000)
    return body


def canvas_pixels(page) -> np.ndarray:
    """What the canvas shows on screen, as an (H, W, 3) array. Chromium paints it from the nearest
    whole pixel when its box starts at a fraction of one (the header's text height)."""
    box = page.locator("#canvas").bounding_box()
    clip = {name: round(box[name]) for name in ("x", "y", "width", "height")}
    shot = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
    return np.asarray(shot).astype(int)


def near(shape: tuple[int, int], x: float, y: float, reach: float) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.hypot(cols + 0.5 - x, rows + 0.5 - y) <= reach


def test_click_draws_a_coloured_mask_under_the_markers_links_it_and_clear_resets(
        server, page, reference_mask, test_images):
    image = test_images / "chelsea.png"  # 451x300: shown at its own size in a 1280x900 window
    box = open_image(page, server, image)
    assert (box["width"], box["height"]) == (451, 300)
    ready = "chelsea.png: 451×300. Click the object."
    assert page.text_content("#status") == ready

    body = segment_by(page, lambda: page.mouse.click(box["x"] + 225.5, box["y"] + 150.5))
    assert page.evaluate("[state.points, state.labels]") == [[[225, 150]], [1]]  # whole CSS pixels
    mask = fetch_mask(body["mask_url"]) == 255
    expected, _ = reference_mask(upright_rgb(image), points=[[225, 150]])
    assert np.array_equal(mask, expected)
    assert page.get_attribute("#mask-link", "href") == body["mask_url"]
    assert page.text_content("#score") == f"{body['score']:.3f}"
    assert page.text_content("#status") in ("451×300, image encoded.", "451×300, image cached.")  # (other tests')

    shown, original = canvas_pixels(page), upright_rgb(image).astype(int)
    assert shown.shape == original.shape
    away = ~near(mask.shape, 225, 150, MARKER_REACH)
    inside, edge = mask & ~mask_edge(mask, 4) & away, mask_edge(mask, 1) & away
    outside = ~mask & away
    assert inside.sum() > 10_000 and edge.sum() > 1_000 and outside.sum() > 1_000  # random weights: a speckled blob
    # The fill: the image's pixels half-way to the mask colour, as app.js composes it.
    tinted = original * MASK_KEEP / 255 + np.round(MASK * (255 - MASK_KEEP) / 255)
    assert np.abs(shown[inside] - tinted[inside]).max() <= 2
    assert np.abs(shown[edge] - MASK).max() <= 2  # an opaque outline along the mask's edge
    assert np.array_equal(shown[outside], original[outside])  # the rest untouched
    # The marker on top of the mask: green with a white ring, at the clicked pixel.
    assert mask[150, 225]
    assert np.abs(shown[150, 225] - OBJECT).max() <= 2
    assert shown[150, 219].min() >= 245  # 5.5 px left of the click's point: the ring

    page.click("#clear")
    page.wait_for_selector("#result", state="hidden")
    assert page.text_content("#status") == ready
    assert page.evaluate("[state.points, state.box, state.mask]") == [[], None, None]
    assert np.array_equal(canvas_pixels(page), original)


def chained_mask(predictor, steps: list[dict]) -> np.ndarray:
    """What the page asks for: each prompt (points, labels, box) refining the previous answer, the
    first with SAM 2's multimask advice; ``predictor``'s (SAM2ImagePredictor's) mask after the last step."""
    previous = None
    for step in steps:
        points, box = step.get("points"), step.get("box")
        masks, scores, logits = predictor.predict(
            point_coords=None if points is None else np.asarray(points, dtype=np.float32),
            point_labels=None if points is None else np.asarray(step.get("labels", [1] * len(points))),
            box=None if box is None else np.asarray(box, dtype=np.float32),
            mask_input=None if previous is None else previous[None],
            multimask_output=box is None and len(points) == 1)
        best = int(np.argmax(scores))
        previous = logits[best]
    return masks[best] > 0


def test_background_clicks_and_a_box_are_sent_and_drawn_over_the_mask(server, page, reference_predictor, test_images):
    image = test_images / "coffee.png"  # 600x400
    box = open_image(page, server, image)
    segment_by(page, lambda: page.mouse.click(box["x"] + 300.5, box["y"] + 200.5))
    segment_by(page, lambda: page.mouse.click(box["x"] + 50.5, box["y"] + 50.5, button="right"))
    assert page.evaluate("[state.points, state.labels]") == [[[300, 200], [50, 50]], [1, 0]]

    def drag():
        page.mouse.move(box["x"] + 150.5, box["y"] + 100.5)
        page.mouse.down()
        page.mouse.move(box["x"] + 450.5, box["y"] + 350.5, steps=5)
        page.mouse.up()

    body = segment_by(page, drag)
    assert page.evaluate("state.box") == [150, 100, 450, 350]
    expected = chained_mask(reference_predictor(upright_rgb(image)), [
        {"points": [[300, 200]]}, {"points": [[300, 200], [50, 50]], "labels": [1, 0]},
        {"points": [[300, 200], [50, 50]], "labels": [1, 0], "box": [150, 100, 450, 350]}])
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, expected)
    shown = canvas_pixels(page)
    assert np.abs(shown[50, 50] - BACKGROUND).max() <= 2 and np.abs(shown[200, 300] - OBJECT).max() <= 2
    for x, y in [(300, 100), (300, 349), (150, 200), (449, 200)]:  # the box's edges, inside its stroke
        assert np.abs(shown[y, x] - BOX).max() <= 2, (x, y, shown[y, x])

    page.keyboard.press("Backspace")  # undo the box: back to the two clicks and their mask, no request
    assert page.evaluate("[state.points, state.box]") == [[[300, 200], [50, 50]], None]
    assert page.get_attribute("#mask-link", "href") == page.evaluate("state.history[1].choices[0].result.mask_url")


def test_a_tall_image_fits_the_window_and_clicks_land_on_its_pixels(server, page, reference_mask, test_images,
                                                                    tmp_path):
    tall = tmp_path / "tall.png"
    Image.open(test_images / "chelsea.png").transpose(Image.Transpose.ROTATE_90).resize((600, 1800)).save(tall)
    box = open_image(page, server, tall)
    assert box["y"] + box["height"] <= VIEWPORT["height"] and box["height"] > 0.6 * VIEWPORT["height"]
    assert box["width"] / box["height"] == pytest.approx(600 / 1800, abs=1e-3)
    x, y = math.floor(box["x"]) + 1, math.floor(box["y"]) + 1  # a whole CSS pixel, as mouse events give
    dx, dy = 100, 500
    point = [math.floor((dx + x - box["x"]) * 600 / box["width"] + 0.5),
             math.floor((dy + y - box["y"]) * 1800 / box["height"] + 0.5)]

    body = segment_by(page, lambda: page.mouse.click(x + dx, y + dy))
    assert page.evaluate("state.points") == [point]
    expected, _ = reference_mask(upright_rgb(tall), points=[point])
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, expected)
    status = page.locator(".bar").bounding_box()
    assert 0 <= status["y"] and status["y"] + status["height"] <= VIEWPORT["height"]  # never scrolled away
    assert page.evaluate("document.scrollingElement.scrollHeight") <= VIEWPORT["height"]
    shown = canvas_pixels(page)  # the marker keeps its size on screen, at the clicked spot
    assert np.abs(shown[round(dy + y - box["y"]), round(dx + x - box["x"])] - OBJECT).max() <= 2


def test_without_s3_the_score_is_shown_with_no_mask_and_no_link(server_without_s3, page, test_images):
    image = test_images / "chelsea.png"
    box = open_image(page, server_without_s3, image)
    with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
        page.mouse.click(box["x"] + 225.5, box["y"] + 150.5)
    body = answer.value.json()
    assert body["mask_url"] is None
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#status") == "No mask_url: S3 is not configured on the server."
    assert page.text_content("#score") == f"{body['score']:.3f}" and page.is_hidden("#mask-link")
    shown, original = canvas_pixels(page), upright_rgb(image).astype(int)
    away = ~near(original.shape[:2], 225, 150, MARKER_REACH)
    assert np.array_equal(shown[away], original[away])  # the image and the marker, no mask
    assert np.abs(shown[150, 225] - OBJECT).max() <= 2


def test_a_file_that_is_not_an_image_is_named_in_the_status_line(server, page):
    page.goto(f"{server.url}/ui/")
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('notes.txt')")
    assert page.text_content("#status") == "notes.txt: this browser cannot show it as an image."
    assert page.is_hidden("#stage")


# Records the text fields of every form the page sends (Chromium does not hand a form holding a
# file to Playwright's request events).
RECORD_FORMS = """
window.sentForms = [];
const originalFetch = window.fetch;
window.fetch = (url, options) => {
  if (options && options.body instanceof FormData) {
    window.sentForms.push(Object.fromEntries([...options.body.entries()].filter(([, v]) => typeof v === "string")));
  }
  return originalFetch(url, options);
};
"""


def test_clicks_refine_the_mask_shown_candidates_are_picked_and_undo_goes_back(
        server, page, reference_predictor, test_images, tmp_path):
    image = test_images / "chelsea.png"
    predictor = reference_predictor(upright_rgb(image))
    page.add_init_script(RECORD_FORMS)
    box = open_image(page, server, image)

    first = segment_by(page, lambda: page.mouse.click(box["x"] + 225.5, box["y"] + 150.5))
    sent = page.evaluate("window.sentForms")
    assert len(sent) == 1 and "previous_mask_id" not in sent[0]
    assert (sent[0]["candidates"], sent[0]["formats"], sent[0]["points"]) == ("true", '["polygons"]', "[[225,150]]")
    page.wait_for_selector("#candidates:not(.empty) button >> nth=2")
    assert page.locator("#candidates button").count() == 3
    assert page.locator("#candidates span").all_text_contents() == [f"{c['score']:.3f}" for c in first["candidates"]]
    masks, scores, logits = predictor.predict(point_coords=np.asarray([[225.0, 150.0]]), point_labels=np.asarray([1]))
    order = np.argsort(-scores, kind="stable")

    # Pick the second candidate: it is shown, and the next click refines it.
    page.locator("#candidates button").nth(1).click()
    second_candidate = first["candidates"][1]
    assert page.get_attribute("#mask-link", "href") == second_candidate["mask_url"]
    assert page.text_content("#score") == f"{second_candidate['score']:.3f}"
    second = segment_by(page, lambda: page.mouse.click(box["x"] + 50.5, box["y"] + 50.5, button="right"))
    sent = page.evaluate("window.sentForms")
    assert len(sent) == 2 and sent[1]["previous_mask_id"] == second_candidate["mask_id"] and "candidates" not in sent[1]
    assert page.locator("#candidates.empty").count() == 1  # two clicks: one mask, no thumbnails
    expected, _, _ = predictor.predict(point_coords=np.asarray([[225.0, 150.0], [50.0, 50.0]]),
                                       point_labels=np.asarray([1, 0]), mask_input=logits[order[1]][None],
                                       multimask_output=False)
    assert np.array_equal(fetch_mask(second["mask_url"]) == 255, expected[0] > 0)

    # The polygons of the mask shown, as a JSON download.
    with page.expect_download() as download:
        page.click("#polygons-link")
    assert json.loads(Path(download.value.path()).read_text()) == second["polygons"]

    # Undo: back to the second candidate of the first click, thumbnails and all, without a request.
    page.keyboard.press("Control+z")
    assert page.evaluate("[state.points, state.labels]") == [[[225, 150]], [1]]
    assert page.get_attribute("#mask-link", "href") == second_candidate["mask_url"]
    assert page.locator("#candidates button.chosen span").text_content() == f"{second_candidate['score']:.3f}"
    assert np.array_equal(fetch_mask(second_candidate["mask_url"]) == 255, masks[order[1]] > 0)
    page.keyboard.press("Control+z")
    assert page.evaluate("[state.points, state.mask, state.history.length]") == [[], None, 0]
    assert len(page.evaluate("window.sentForms")) == 2 and page.is_disabled("#undo")


def test_a_mask_the_server_no_longer_holds_is_answered_by_the_clicks_alone(server, page, reference_mask, test_images):
    image = test_images / "coffee.png"
    page.add_init_script(RECORD_FORMS)
    box = open_image(page, server, image)
    segment_by(page, lambda: page.mouse.click(box["x"] + 300.5, box["y"] + 200.5))
    page.evaluate("state.result.mask_id = 'm_' + 'Q'.repeat(22)")  # as if evicted since
    with page.expect_response(lambda r: r.url.endswith("/segment") and r.status == 200) as answer:
        page.mouse.click(box["x"] + 200.5, box["y"] + 150.5)
    body = answer.value.json()
    page.wait_for_function("url => document.getElementById('mask-link').href === url", arg=body["mask_url"])
    sent = page.evaluate("window.sentForms")
    assert [form.get("previous_mask_id") for form in sent] == [None, "m_" + "Q" * 22, None]
    expected, _ = reference_mask(upright_rgb(image), points=[[300, 200], [200, 150]])
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, expected)
    assert page.text_content("#status") == "600×400, image cached."


def test_pages_load_scripts_only_from_this_server_and_masks_only_from_the_bucket(server, s3_server, page):
    """/ui keeps the API key in sessionStorage: no script from elsewhere may run on this origin. The
    docs page at / was BentoML's, which loads Google Tag Manager; /ui had no policy at all."""
    for path in ("/ui/", "/ui/app.js", "/ui/video.html"):
        policy = httpx.get(server.url + path).headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in policy and "connect-src 'self';" in policy
        assert f"img-src 'self' {s3_server.url};" in policy  # the masks, and nothing else
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{server.url}/")
    page.wait_for_selector(".swagger-ui .opblock")  # Swagger UI ran, and showed the routes of /docs.json
    assert "SAM 2 segmentation API" in page.text_content(".swagger-ui .info .title")
    assert f"{server.url}/docs.json" in requested
    assert [url for url in requested if not url.startswith(server.url + "/")] == []
    assert "content-security-policy" in httpx.get(server.url + "/").headers
