"""The /ui page's "Segment everything" button in a real headless Chromium, against a real server
and S3: the colours it draws (read back from a screenshot) are the CLI overlay of the server's label
map, and a click on an object links that object's mask."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from sam2_api.cli.overlay import draw_objects
from sam2_api.api.labelmap import read_png
from tests.conftest import upright_rgb
from tests.integration import test_ui

page = test_ui.page  # the headless Chromium page fixture
pytestmark = test_ui.pytestmark  # skipped, saying so, where there is no Chromium

# Random weights: the generator's default thresholds would keep nothing, so they go in the address; the
# grid goes in the page's own control.
QUERY = "?pred_iou_thresh=0&stability_score_thresh=0&box_nms_thresh=1"


def view_pixels(page) -> np.ndarray:
    box = page.locator("#everything-canvas").bounding_box()
    clip = {name: round(box[name]) for name in ("x", "y", "width", "height")}
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")).astype(int)


def test_segment_everything_colours_each_object_and_a_click_links_its_mask(server, page, test_images):
    image = test_images / "chelsea.png"  # 451x300: shown at its own size in a 1280x900 window
    page.goto(f"{server.url}/ui/{QUERY}")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#everything:not([disabled])")
    assert page.input_value("#points-per-side") == ""  # the server's default for its device, unless set
    page.fill("#points-per-side", "2")
    with page.expect_response(lambda r: r.url.endswith("/segment_everything")) as answer:
        page.click("#everything")
    body = answer.value.json()
    assert len(body["objects"]) == 12  # 2×2 points, 3 masks each, none dropped: the grid and the address's parameters
    page.wait_for_selector("#everything-canvas:not([hidden])")
    assert page.is_hidden("#canvas")
    assert page.text_content("#status") == f"{len(body['objects'])} objects. Click one for its mask."
    assert page.text_content("#everything") == "Back to clicking"

    labels = read_png(httpx.get(body["label_map_url"], timeout=10).content)
    assert labels.max() >= 2  # several objects show
    expected = np.asarray(draw_objects(Image.fromarray(upright_rgb(image)), labels)).astype(int)
    assert np.array_equal(view_pixels(page), expected)  # the page's label map and colours are the server's and the CLI's

    box = page.locator("#everything-canvas").bounding_box()
    y, x = np.argwhere(labels > 0)[len(np.argwhere(labels > 0)) // 2]
    chosen = int(labels[y, x])
    page.mouse.click(box["x"] + x + 0.5, box["y"] + y + 0.5)
    page.wait_for_selector("#everything-result:not([hidden])")
    found = body["objects"][chosen - 1]
    assert page.get_attribute("#everything-link", "href") == found["mask_url"]
    assert page.text_content("#everything-score") == f"{found['predicted_iou']:.3f}"
    assert page.text_content("#status") == f"Object {chosen} of {len(body['objects'])}: {found['area']} pixels."
    shown = view_pixels(page)
    changed = np.any(shown != expected, axis=-1)
    assert changed.any() and (labels[changed] == chosen).all()  # only the chosen object's outline turns white
    assert (shown[changed] == 255).all()

    page.click("#everything")
    page.wait_for_selector("#everything-canvas", state="hidden")
    assert page.is_visible("#canvas") and page.text_content("#everything") == "Segment everything"
