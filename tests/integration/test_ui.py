"""The click-to-segment page in a real headless Chromium, against a real server and S3."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import upright_rgb
from tests.integration.test_segment_api import fetch_mask

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="no Chromium here (Debian: apt-get install chromium); .ci/run installs it")
# Headless as root, and quiet: this machine has no network beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def test_click_shows_the_mask_that_segment_returns_and_undo_removes_it(server, page, reference_mask,
                                                                        test_images, tmp_path):
    image = test_images / "chelsea.png"  # 451x300: shown at its own size in a 1280-wide window
    page.goto(f"{server.url}/ui/")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#stage:not([hidden])")
    canvas = page.locator("#canvas").bounding_box()
    assert (round(canvas["width"]), round(canvas["height"])) == (451, 300)

    page.mouse.click(canvas["x"] + 225.5, canvas["y"] + 150.5)  # the centre of image pixel (225, 150)
    page.wait_for_function("() => !document.getElementById('mask').hidden", timeout=60_000)
    assert "score 0." in page.text_content("#status")
    mask_url = page.get_attribute("#mask", "src")
    assert page.evaluate("document.getElementById('mask').naturalWidth") == 451
    assert page.evaluate("state.points") == [[225, 150]]  # mouse events land on whole CSS pixels
    expected, _ = reference_mask(upright_rgb(image), points=[[225, 150]])
    assert np.array_equal(fetch_mask(mask_url) == 255, expected)
    page.screenshot(path=str(tmp_path / "ui.png"))  # for a person who wants to look

    page.keyboard.press("Backspace")  # undo the only point: no prompt left, no mask shown
    page.wait_for_function("() => document.getElementById('mask').hidden", timeout=10_000)


def test_right_click_adds_a_background_point(server, page, reference_mask, test_images):
    image = test_images / "coffee.png"  # 600x400
    page.goto(f"{server.url}/ui/")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#stage:not([hidden])")
    canvas = page.locator("#canvas").bounding_box()
    page.mouse.click(canvas["x"] + 300.5, canvas["y"] + 200.5)
    page.wait_for_function("() => !document.getElementById('mask').hidden", timeout=60_000)
    first = page.get_attribute("#mask", "src")
    page.mouse.click(canvas["x"] + 50.5, canvas["y"] + 50.5, button="right")
    page.wait_for_function(f"() => document.getElementById('mask').src !== {first!r}", timeout=60_000)
    assert page.evaluate("[state.points, state.labels]") == [[[300, 200], [50, 50]], [1, 0]]
    expected, _ = reference_mask(upright_rgb(image), points=[[300, 200], [50, 50]], labels=[1, 0])
    assert np.array_equal(fetch_mask(page.get_attribute("#mask", "src")) == 255, expected)
