"""Odd and hostile inputs over HTTP: each gets 200 with the right size, or a clear 4xx."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.test_segment_api import post


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` (Pillow refuses to write a 0×0 one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def photo(test_images, mode: str = "RGB") -> Image.Image:
    return Image.open(test_images / "chelsea.png").convert(mode)  # 451x300


def frames(test_images) -> list[Image.Image]:
    first = photo(test_images)
    return [first, first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


ACCEPTED = {
    "1x1 image": lambda d: (encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
    "animated GIF": lambda d: (encoded(frames(d)[0], "GIF", save_all=True, append_images=frames(d)[1:]), (451, 300)),
    "multi-page TIFF": lambda d: (encoded(frames(d)[0], "TIFF", save_all=True, append_images=frames(d)[1:]), (451, 300)),
    "16-bit PNG": lambda d: (encoded(Image.fromarray(np.array(photo(d, "L"), dtype=np.uint16) * 257), "PNG"), (451, 300)),
    "CMYK JPEG": lambda d: (encoded(photo(d, "CMYK"), "JPEG"), (451, 300)),
    "RGBA PNG": lambda d: (encoded(photo(d, "RGBA"), "PNG"), (451, 300)),
    "palette PNG": lambda d: (encoded(photo(d).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), (451, 300)),
    "WebP": lambda d: (encoded(photo(d), "WEBP"), (451, 300)),
    "BMP": lambda d: (encoded(photo(d), "BMP"), (451, 300)),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_every_accepted_kind_of_image_is_segmented_at_its_size(server, test_images, case):
    data, (width, height) = ACCEPTED[case](test_images)
    response = post(server, data, points=[[width / 2, height / 2]])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (width, height)
    mask = Image.open(io.BytesIO(httpx.get(body["mask_url"], timeout=10).content))
    assert mask.size == (width, height) and mask.mode == "L"


REFUSED = [
    ("0x0 image", lambda d: (png_with_declared_size(0, 0), {"points": [[0, 0]]}), 400, "starts like a PNG"),
    ("huge declared size", lambda d: (png_with_declared_size(100_000, 100_000), {"points": [[1, 1]]}), 413, "limit"),
    ("huge coordinates", lambda d: (encoded(photo(d), "PNG"), {"points": [[1e30, 5]]}), 400, "outside the 451x300 image"),
    ("too many points", lambda d: (encoded(photo(d), "PNG"), {"points": [[1, 1]] * 65}), 400, "at most 64"),
    ("points not a list", lambda d: (encoded(photo(d), "PNG"), {"points": "abc"}), 400, "points"),
    ("labels an object", lambda d: (encoded(photo(d), "PNG"), {"points": [[1, 1]], "labels": {"a": 1}}), 400, "labels"),
    ("multimask not a bool", lambda d: (encoded(photo(d), "PNG"), {"box": [1, 1, 9, 9], "multimask_output": "maybe"}), 400, "multimask_output"),
    ("box of two numbers", lambda d: (encoded(photo(d), "PNG"), {"box": [1, 2]}), 400, "box"),
    ("inf in box", lambda d: (encoded(photo(d), "PNG"), {"box": [1, 2, float("inf"), 9]}), 400, "finite"),
]


@pytest.mark.parametrize("case, make, status, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_inputs_say_why(server, test_images, case, make, status, words):
    data, fields = make(test_images)
    files = {"image": ("upload.png", data)}
    form = {name: json.dumps(value) if not isinstance(value, str) else value for name, value in fields.items()}
    response = httpx.post(f"{server.url}/segment", files=files, data=form, timeout=60)
    assert response.status_code == status, response.text
    assert words in response.text


def test_unknown_fields_are_ignored(server, test_images):
    response = post(server, encoded(photo(test_images), "PNG"), points=[[225, 150]], colour="blue")
    assert response.status_code == 200 and response.json()["width"] == 451


@pytest.fixture
def listener():
    """A loopback TCP port that records every connection made to it (none may be)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()


def form_of(*parts: tuple[str, bytes, str | None]) -> list:
    """httpx ``files`` for parts (name, content, filename or None for a text field)."""
    return [(name, (filename, content, "application/octet-stream") if filename else (None, content))
            for name, content, filename in parts]


NEVER_500 = {
    "1001 fields": (lambda d: form_of(*[(f"f{i}", b"1", None) for i in range(1001)]), 413, "more than 64 parts"),
    "1001 files": (lambda d: form_of(*[(f"f{i}", b"", "x.txt") for i in range(1001)]), 413, "more than 64 parts"),
    "a field over 1 MB": (lambda d: form_of(("points", b"1" * 1_100_000, None)), 413, "over 262144 bytes"),
    "5000-deep JSON": (lambda d: form_of(("image", (d / "chelsea.png").read_bytes(), "c.png"),
                                         ("points", b"[" * 5000 + b"]" * 5000, None)), 400, "nested more than 64"),
    "a 5000-digit number": (lambda d: form_of(("image", (d / "chelsea.png").read_bytes(), "c.png"),
                                              ("points", b"[[" + b"9" * 5000 + b", 1]]", None)), 400,
                            "more than 1000 digits"),
}


@pytest.mark.parametrize("case", NEVER_500)
def test_forms_bentoml_cannot_parse_are_a_4xx_not_a_500(server, test_images, case):
    make, status, words = NEVER_500[case]
    response = httpx.post(f"{server.url}/segment", files=make(test_images), timeout=60)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_text_image_field_is_refused_and_never_downloaded(server, listener):
    port, accepted = listener
    url = f"http://127.0.0.1:{port}/x.png"
    multipart = httpx.post(f"{server.url}/segment", files=form_of(("image", url.encode(), None)),
                           data={"points": "[[1, 1]]"}, timeout=30)
    assert multipart.status_code == 400
    assert "`image` must be a file part" in multipart.json()["error"]
    urlencoded = httpx.post(f"{server.url}/segment", data={"image": url, "points": "[[1, 1]]"}, timeout=30)
    assert urlencoded.status_code == 415 and "multipart/form-data" in urlencoded.json()["error"]
    time.sleep(0.5)
    assert accepted == []  # BentoML's MultipartSerde.ensure_file would have fetched it


# --- what a newcomer tries first (issue 18) ---

def test_an_image_under_another_field_name_says_where_it_goes(server, test_images):
    # curl -F file=@photo.jpg
    response = httpx.post(f"{server.url}/segment", files=form_of(("file", (test_images / "rocket.jpg").read_bytes(),
                                                                          "photo.jpg")), timeout=30)
    assert response.status_code == 400
    assert response.json()["error"].startswith(
        "form field `file` is a file that is not text, and no file field of this API is called `file`: "
        "the image goes in `image` (curl -F image=@photo.jpg)")


def test_a_base64_image_in_json_is_one_error_in_words(server, test_images):
    image = base64.b64encode((test_images / "chelsea.png").read_bytes()).decode()
    response = httpx.post(f"{server.url}/segment", json={"image": image, "points": [[225, 150]]}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": "`image` is a file and cannot be sent in a JSON body (base64 neither): send "
                                        "the request as multipart/form-data (curl -F image=@photo.jpg), or name it "
                                        "by `image_url`"}
    not_json = httpx.post(f"{server.url}/segment", content=b"points=[[1,1]]",
                          headers={"content-type": "application/json"}, timeout=30)
    assert not_json.status_code == 400 and not_json.json()["error"].startswith("the body is not valid JSON")


def test_get_on_a_route_is_a_json_405_and_docs_leads_to_the_page(server):
    response = httpx.get(f"{server.url}/segment", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"].startswith("/segment takes POST, not GET")
    docs = httpx.get(f"{server.url}/docs", timeout=30, follow_redirects=True)
    assert docs.status_code == 200 and str(docs.url) == f"{server.url}/" and "swagger-ui" in docs.text


def test_a_url_encoded_form_of_an_image_id_is_served(server, test_images):
    first = post(server, (test_images / "chelsea.png").read_bytes(), image_id="issue18-chelsea", points=[[225, 150]])
    assert first.status_code == 200, first.text
    # curl -d image_id=issue18-chelsea -d 'points=[[225,150]]'
    again = httpx.post(f"{server.url}/segment", data={"image_id": "issue18-chelsea", "points": "[[225,150]]"},
                       timeout=60)
    assert again.status_code == 200, again.text
    assert again.headers["x-embedding-cache"] == "hit" and again.json()["score"] == first.json()["score"]
