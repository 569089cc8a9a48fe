"""The video page (/ui/video.html) in a real headless Chromium, against a real server and S3: a
clip chosen, objects clicked on its first frame, the task submitted and followed, the preview played."""

from __future__ import annotations

import re

import httpx

from tests.clips import encode, moving_shapes
from tests.integration.test_ui import CHROMIUM, page, pytestmark  # noqa: F401  (the fixture, the skip)


def test_click_objects_on_the_first_frame_track_and_play_the_preview(server, s3, page, tmp_path):
    clip = tmp_path / "clip.webm"
    clip.write_bytes(encode(moving_shapes(2), "webm"))  # VP9: every Chromium build plays it
    page.goto(f"{server.url}/ui/")
    page.click("text=Track objects in a video clip")
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("#stage:not([hidden])")
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / 128
    page.mouse.click(box["x"] + 20 * scale, box["y"] + 32 * scale)  # object 0: the red square
    page.mouse.click(box["x"] + 90 * scale, box["y"] + 30 * scale)  # object 1: the green disc
    page.keyboard.down("Shift")
    page.mouse.click(box["x"] + 95 * scale, box["y"] + 35 * scale)  # one more point on object 1
    page.keyboard.up("Shift")
    # every wording the status line shows while the task runs
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => window.seen.push(
        document.getElementById("status").textContent)).observe(document.getElementById("status"),
        { childList: true, characterData: true, subtree: true }); }""")
    page.click("#track")
    page.wait_for_selector("#preview:not([hidden])", timeout=240_000)
    assert "Tracked 2 object(s) through 2 frames (128×96)" in page.text_content("#status")
    assert page.get_attribute("#preview", "src").endswith("/preview.mp4")
    running = page.evaluate("window.seen")[:-1]  # the last: the result
    assert running and all(re.fullmatch(r"(queued|decoding the clip|tracking|storing the masks)"
                                        r"( \d+/2 frames)?( \(\d+ ahead\))?…", text) for text in running), running
    preview = page.locator("#preview").bounding_box()  # the clip's 128×96, not stretched to the page's width
    assert (round(preview["width"]), round(preview["height"])) == (128, 96)
    manifest = httpx.get(page.get_attribute("#manifest-link", "href"), timeout=10).json()
    sent = [object_["prompts"] for object_ in manifest["objects"]]  # what the page asked for
    assert [[(p["frame_index"], len(p["points"]), p["labels"]) for p in prompts] for prompts in sent] == \
        [[(0, 1, [1])], [(0, 2, [1, 1])]]
    assert abs(sent[0][0]["points"][0][0] - 20) <= 1 and abs(sent[1][0]["points"][0][1] - 30) <= 1
