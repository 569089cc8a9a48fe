"""Seeded fuzzing of POST /segment and /segment_objects over HTTP: whatever arrives, the answer is
a 2xx, or a 4xx whose body says what is wrong — never a 5xx, never a hang.

The budget is fixed (150 cases, at most 90 s): the encoder runs for each new image that decodes
(about 1-2 s on a small CPU), so most cases are made to be refused before it. A failure names
its seed and case number; ``FUZZ_SEED=<n>`` replays another sequence.
"""

from __future__ import annotations

import json
import os
import random
import time

import httpx
import pytest

from tests.integration.test_segment_api import post
from tests.mutations import image_seeds, mutate

CASES = 150
BUDGET_S = 90
FIELDS = ["points", "labels", "box", "multimask_output", "image_id", "image_url", "objects", "image", "colour", "",
          "points[]", "ïmage", "x" * 200, "previous_mask_id", "candidates", "mask_input", "formats", "polygon_tolerance",
          "steps", "chosen"]
VALUES = [
    b"", b"null", b"[]", b"{}", b"[[1, 2]]", b"[[20, 15]]", b"[[1e308, 1e308]]", b"[[NaN, 1]]", b"[[-1, -1]]",
    b"[1, 0]", b"[1]", b"[2]", b"[0, 0, 10, 10]", b"[10, 10, 0, 0]", b"true", b'"maybe"', b'"abc"', b"1e999",
    b"[" * 64 + b"]" * 64, b"[" * 65 + b"]" * 65, b"[[" + b"9" * 999 + b", 1]]", b"[[" + b"9" * 1001 + b", 1]]",
    b"\xff\xfe\x00", b"\x00" * 8, "é中😀".encode(), b'[{"box": [0, 0, 5, 5]}]', b'[{"points": "x"}]',
    b'[{"points": [[1, 1]], "labels": [1, 0]}]', b"[" + b"{}, " * 40 + b"{}]", b'"photo-42"', b'"a b"',
    b'"s3://sam2-test-photos/missing.png"', b'"https://127.0.0.1/x.png"', b'"https://[::127.0.0.1]/x"',
    b'"https://example.com:99999/"', b'"file:///etc/passwd"', b'"https://a\\tb.com/"', b'"s3://UPPER/x"',
]


def random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -1, 2**63, 0.5, -1e-300, 1e300, 10**rng.randrange(1, 400)])
    if kind == 2:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.uniform(-10, 60)
    if kind == 4:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 5:
        return {rng.choice(FIELDS): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [[rng.uniform(0, 40), rng.uniform(0, 30)] for _ in range(rng.randrange(1, 4))]


def random_value(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.choice(VALUES)
    return json.dumps(random_json(rng), allow_nan=rng.random() < 0.1).encode()


def plausible_fields(rng: random.Random, route: str) -> dict[str, bytes]:
    """What a client might send: prompts inside a 40x30 image, some labels, an id."""
    def prompt() -> dict:
        fields: dict = {}
        if rng.random() < 0.7:
            fields["points"] = [[rng.uniform(0, 40), rng.uniform(0, 30)] for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.5:
                fields["labels"] = [rng.randint(0, 1) for _ in fields["points"]]
        if rng.random() < 0.5 or not fields:
            fields["box"] = sorted([rng.uniform(0, 40), rng.uniform(0, 40)]) + sorted([rng.uniform(0, 30), rng.uniform(0, 30)])
            fields["box"] = [fields["box"][0], fields["box"][2], fields["box"][1], fields["box"][3]]
        if rng.random() < 0.3:
            fields["multimask_output"] = rng.random() < 0.5
        if rng.random() < 0.1:
            fields["candidates"] = True
        if rng.random() < 0.1:
            fields["previous_mask_id"] = "m_" + "".join(rng.choice("AZaz09-_") for _ in range(22))
        return fields

    if route == "/segment_objects":
        fields = {"objects": [prompt() for _ in range(rng.randint(1, 3))]}
    else:
        fields = prompt()
        if rng.random() < 0.2:
            fields["steps"] = [{**prompt(), "chosen": rng.randint(0, 3)} for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:
        fields["image_id"] = rng.choice(["fuzz-1", "fuzz-2", "fuzz-3"])
    if rng.random() < 0.2:
        fields["formats"] = rng.sample(["rle", "polygons"], rng.randint(1, 2))
        if rng.random() < 0.5:
            fields["polygon_tolerance"] = rng.choice([0, 1.5])
    return {name: json.dumps(value).encode() for name, value in fields.items()}


def random_form(rng: random.Random, route: str, images: dict[str, bytes], good: list[bytes]) -> tuple[dict, bytes]:
    """Headers and body of a multipart form: a plausible request with a few parts made hostile."""
    parts = [(b'name="' + name.encode() + b'"', value) for name, value in plausible_fields(rng, route).items()]
    source = rng.random()
    if source < 0.35:
        parts.append((b'name="image"; filename="x.png"', rng.choice(good)))
    elif source < 0.65:  # each mutant that still decodes costs an encoder run
        parts.append((b'name="image"; filename="x"', mutate(images[rng.choice(sorted(images))], rng)))
    elif source < 0.85:
        parts.append((b'name="image_url"', rng.choice(VALUES[-9:])))
    for _ in range(rng.choice([0, 1, 1, 2, 3])):  # the hostile edits
        name = rng.choice(FIELDS).encode()
        edit = rng.random()
        if edit < 0.5:
            parts.append((b'name="' + name + b'"', random_value(rng)))
        elif edit < 0.65:
            parts.append((b'name="' + name + b'"; filename="v.json"', random_value(rng)))
        elif edit < 0.8 and parts:
            parts.pop(rng.randrange(len(parts)))
        elif edit < 0.9:
            parts.append((b'name="image"', rng.choice([b"https://127.0.0.1/x.png", b"", b"x"])))
        else:
            parts.append((rng.choice([b"", b'filename="x"', b'name="a"\r\n' + b"X: y\r\n" * 9]), b"1"))
    rng.shuffle(parts)
    boundary = rng.choice([b"fuzzbound"] * 8 + [b"a" * 70, b"--"])
    body = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + value
                    + b"\r\n" for disposition, value in parts)
    body += b"--" + boundary + b"--\r\n" if rng.random() < 0.95 else b""
    if rng.random() < 0.08:
        body = mutate(body, rng)
    content_type = b"multipart/form-data; boundary=" + boundary
    if rng.random() < 0.05:
        content_type = rng.choice([b"multipart/form-data", b"multipart/form-data; boundary=other",
                                   content_type + b"; charset=latin-1", b"application/x-www-form-urlencoded"])
    return {"content-type": content_type.decode("latin-1")}, body


def random_json_body(rng: random.Random) -> tuple[dict, bytes]:
    fields = {name: random_json(rng) for name in rng.sample(FIELDS, rng.randrange(0, 5))}
    body = json.dumps(fields, allow_nan=rng.random() < 0.1).encode()
    if rng.random() < 0.2:
        body = mutate(body, rng) if body else body
    return {"content-type": rng.choice(["application/json", "text/plain", "application/octet-stream"])}, body


def test_fuzzed_requests_get_a_2xx_or_a_4xx_that_says_why(server, test_images):
    seed = int(os.environ.get("FUZZ_SEED", "20261126"))
    rng = random.Random(seed)
    images = image_seeds(test_images)
    good = [images["PNG-RGB-"], images["JPEG-RGB-exif"]]  # decodable: cached after their first encode
    statuses: dict[int, int] = {}
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in range(CASES):
            if time.monotonic() - started > BUDGET_S:
                break
            route = rng.choice(["/segment", "/segment", "/segment_objects"])
            headers, body = random_form(rng, route, images, good) if rng.random() < 0.85 else random_json_body(rng)
            response = client.post(route, content=body, headers=headers)
            where = f"seed {seed} case {case}: {route} {headers} {body[:300]!r} -> {response.status_code} {response.text[:300]}"
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, where
            if response.status_code >= 400:
                error = response.json().get("error")
                assert isinstance(error, str) and error, where
    ran = sum(statuses.values())
    assert ran >= 100, f"only {ran} cases in {BUDGET_S} s: {statuses}"
    assert len([s for s in statuses if 400 <= s < 500]) >= 3, statuses  # the cases reached several refusals
    # and the worker still serves
    assert post(server, (test_images / "chelsea.png").read_bytes(), points=[[225, 150]]).status_code == 200
