"""Fairness between API keys on the model's device, over HTTP against `bentoml serve` with two keys
(the session's guarded server, tests/integration/conftest.py):
one key's segment-everything requests do not hold up the other key's cached click for more than
about one batch of points, and a request that cannot finish is refused before it is computed,
never half-way (src/sam2_api/model/device_thread.py, src/sam2_api/model/mask_generator.py)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from tests.conftest import upright_rgb
from tests.integration.conftest import API_KEYS
from tests.integration.test_segment_api import post

ROUTE = "/segment_everything"
KEEP_ALL = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
HEAVY = dict(points_per_side=6, points_per_batch=1, per_object_masks=False, **KEEP_ALL)  # 36 batches of 1 point
CLICK_BOUND_S = 5.0  # one batch of one point (0.3-0.6 s on this 2-core CPU), a decoder call, HTTP, and margin


def test_one_keys_cached_click_waits_for_one_batch_of_another_keys_segment_everything(guarded_server, test_images):
    """Before: the click queued behind all of A's requests (0 of them answered while A's ran). Now
    B's clicks are answered between A's batches, and A's requests each complete or are refused at once."""
    a, b = ({"Authorization": f"Bearer {key}"} for key in API_KEYS)
    buffer = io.BytesIO()
    Image.fromarray(np.array(Image.fromarray(upright_rgb(test_images / "chelsea.png")).resize((64, 48)))).save(
        buffer, format="PNG")
    png = buffer.getvalue()
    assert post(guarded_server, png, headers=b, image_id="cat", points=[[20, 15]]).status_code == 200
    measured = post(guarded_server, png, route=ROUTE, headers=a, image_id="cat", points_per_side=1, **KEEP_ALL)
    assert measured.status_code == 200, measured.text  # A's image cached, and the pace of a batch measured

    def heavy() -> tuple[float, object]:
        response = post(guarded_server, None, route=ROUTE, headers=a, image_id="cat", **HEAVY)
        return time.monotonic(), response

    clicks = []  # (sent, answered, status)
    with ThreadPoolExecutor(max_workers=3) as pool:
        started = time.monotonic()
        requests = [pool.submit(heavy) for _ in range(3)]
        while not all(request.done() for request in requests):
            sent = time.monotonic()
            status = post(guarded_server, None, headers=b, image_id="cat", points=[[20, 15]]).status_code
            clicks.append((sent, time.monotonic(), status))
        answered = [request.result() for request in requests]
    first_done = min(done for done, response in answered if response.status_code == 200)  # a refusal comes at once

    for _, response in answered:
        # Complete, or refused before any of its points was computed (never "n of 36 points were done").
        assert response.status_code == 200 or (
            response.status_code == 503 and "nothing was computed" in response.text), response.text
    assert sum(response.status_code == 200 for _, response in answered) >= 1
    assert all(status == 200 for _, _, status in clicks)
    during = [(sent, done) for sent, done, _ in clicks if sent > started + 1 and done < first_done]
    assert len(during) >= 3, (first_done - started, [response.status_code for _, response in answered], clicks)
    assert max(done - sent for sent, done, _ in clicks) < CLICK_BOUND_S, clicks
