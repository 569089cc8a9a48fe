"""The guard: API keys, framing and the body as it streams in, in front of a real Starlette app.

Most tests speak ASGI to the guard directly, as uvicorn does, so that they choose the exact
headers, chunks and delays; the app behind it parses the form with Starlette, as BentoML does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sam2_api.api.guard import RequestGuard, tenant_id

seen: list[dict] = []  # what the app behind the guard got: one entry per request it finished reading


async def segment(request):
    if request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        seen.append({"fields": sorted(form.keys()), "tenant": getattr(request.state, "tenant", None)})
    else:
        seen.append({"bytes": len(await request.body()), "tenant": getattr(request.state, "tenant", None)})
    return JSONResponse({"ok": True})


async def health(request):
    return JSONResponse({"ok": True})


APP = Starlette(routes=[Route("/segment", segment, methods=["POST"]), Route("/readyz", health),
                        Route("/metrics", health)])


def guard(**options) -> RequestGuard:
    options.setdefault("max_upload_bytes", 1000)
    return RequestGuard(APP, paths={"/segment"}, **options)


def client(**options) -> TestClient:
    return TestClient(guard(**options))


@pytest.fixture(autouse=True)
def _clear():
    seen.clear()


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    seconds: float

    def error(self) -> str:
        return json.loads(self.body)["error"]


def exchange(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes] = (), delay: float = 0.0,
             endless: bool = False, path: str = "/segment") -> Answer:
    """One request as uvicorn hands it to an ASGI app: ``chunks`` of the body, ``delay`` seconds
    apart (``endless``: the last one never comes), then a client that stays connected."""

    async def run() -> Answer:
        pending = list(chunks)
        sent: list[dict] = []

        async def receive():
            if pending or endless:
                await asyncio.sleep(delay)
            if pending:
                chunk = pending.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(pending) or endless}
            if endless:
                return {"type": "http.request", "body": b"", "more_body": True}
            await asyncio.Event().wait()  # after the body, a client waits for its answer

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        started = time.monotonic()
        await asyncio.wait_for(app(scope, receive, send), 30)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert sum(m["type"] == "http.response.start" for m in sent) == 1
        return Answer(start["status"], dict(start["headers"]), body, time.monotonic() - started)

    return asyncio.run(run())


def multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"XyZ") -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a form; each part is (its header lines, its content)."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts)
    body += b"--" + boundary + b"--\r\n"
    return [(b"content-type", b"multipart/form-data; boundary=" + boundary)], body


def field(name: str, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name.encode() + b'"', value


def file(name: str, value: bytes, filename: str = "x.png") -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="' + name.encode() + b'"; filename="' + filename.encode()
            + b'"\r\nContent-Type: application/octet-stream', value)


# --- API keys ---

def test_without_keys_everything_passes_and_no_tenant_is_set():
    assert client().post("/segment", content=b" " * 10).json() == {"ok": True}
    assert seen == [{"bytes": 10, "tenant": None}]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "bearer", "Basic a2V5LW9uZQ==", "key-one", "Bearer key-one2"])
def test_a_missing_or_wrong_key_is_401_before_the_body_is_read(header):
    headers = {"Authorization": header} if header else {}
    response = client(api_keys=["key-one", "key-two"]).post("/segment", content=b" " * 10, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing or invalid API key" in response.json()["error"]
    assert "key-one" not in response.text
    assert seen == []


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_any_configured_key_is_accepted_and_names_its_tenant(key):
    response = client(api_keys=["key-one", "key-two"]).post(
        "/segment", content=b" ", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert seen == [{"bytes": 1, "tenant": hashlib.sha256(key.encode()).hexdigest()[:16]}]


def test_tenant_ids_are_stable_distinct_and_not_the_key():
    assert tenant_id("key-one") == hashlib.sha256(b"key-one").hexdigest()[:16]
    assert tenant_id("key-one") != tenant_id("key-two")
    assert len(tenant_id("key-one")) == 16 and "key" not in tenant_id("key-one")


@pytest.mark.parametrize("values", [[b"Bearer key-one", b"Bearer key-one"], [b"Bearer wrong", b"Bearer key-one"],
                                    [b"Bearer key-one", b"Bearer wrong"]])
def test_several_authorization_headers_are_400_whatever_they_hold(values):
    headers = [(b"authorization", value) for value in values] + [(b"content-length", b"1")]
    answer = exchange(guard(api_keys=["key-one"]), headers, [b" "])
    assert answer.status == 400
    assert answer.error() == "send one Authorization header, not several"
    assert seen == []


def test_health_and_metrics_stay_open():
    guarded = client(api_keys=["key-one"])
    assert guarded.get("/readyz").status_code == 200
    assert guarded.get("/metrics").status_code == 200


# --- the size of the body ---

def test_uploads_declared_over_the_limit_are_413_before_the_body_is_read():
    response = client().post("/segment", content=b" " * 1001)
    assert response.status_code == 413
    assert response.json()["error"] == "the upload is 1001 bytes; the limit is 1000 bytes (SAM2_MAX_UPLOAD_BYTES)"
    assert seen == []
    assert client().post("/segment", content=b" " * 1000).status_code == 200


def test_chunked_uploads_are_counted_as_they_arrive():
    def chunks(total):
        for _ in range(total // 100):
            yield b" " * 100

    response = client().post("/segment", content=chunks(1000))
    assert response.status_code == 200 and seen == [{"bytes": 1000, "tenant": None}]
    seen.clear()
    response = client().post("/segment", content=chunks(300_000))
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert response.json()["error"] == "the upload is more than 1000 bytes; the limit is 1000 bytes (SAM2_MAX_UPLOAD_BYTES)"
    assert seen == []  # the app never got the whole body


def test_a_body_longer_than_declared_is_cut_at_the_limit_not_at_the_declaration():
    # uvicorn stops at Content-Length itself; an ASGI server that did not would still be bounded here.
    answer = exchange(guard(), [(b"content-length", b"10")], [b" " * 600, b" " * 600])
    assert answer.status == 413 and seen == []


@pytest.mark.parametrize("headers, words", [
    ([(b"content-length", b"10"), (b"transfer-encoding", b"chunked")], "not both"),
    ([(b"content-length", b"10"), (b"content-length", b"10")], "one Content-Length"),
    ([(b"content-length", b"ten")], "Content-Length must be a number of bytes; got 'ten'"),
    ([(b"content-length", b"-1")], "must be a number"),
    ([(b"transfer-encoding", b"gzip, chunked")], "the only Transfer-Encoding accepted is chunked"),
])
def test_ambiguous_framing_is_400_before_the_body_is_read(headers, words):
    answer = exchange(guard(), headers, [b" " * 10])
    assert answer.status == 400 and words in answer.error()
    assert seen == []


def test_json_bodies_are_limited_to_a_mebibyte_whatever_the_upload_limit():
    limited = guard(max_upload_bytes=64 * 1024**2)
    answer = exchange(limited, [(b"content-type", b"application/json"), (b"content-length", b"2000000")], [b" " * 10])
    assert answer.status == 413 and answer.error().endswith("the limit is 1048576 bytes (for a JSON body)")
    answer = exchange(limited, [(b"content-type", b"application/json")], [b" " * 600_000, b" " * 600_000])
    assert answer.status == 413 and seen == []


def test_bodies_are_classified_as_bentoml_picks_its_parser():
    limited = guard(max_upload_bytes=64 * 1024**2)
    big = [b" " * 600_000, b" " * 600_000]
    # BentoML matches the media type case-sensitively: this one goes to its JSON parser
    answer = exchange(limited, [(b"content-type", b"Multipart/Form-Data; boundary=x")], big)
    assert answer.status == 413 and answer.error().endswith("(for a JSON body)")
    # the first Content-Type is the one BentoML and Starlette read
    headers, body = multipart(field("points", b"[[1, 2]]"))
    answer = exchange(limited, headers + [(b"content-type", b"application/json")], [body])
    assert answer.status == 200 and seen == [{"fields": ["points"], "tenant": None}]


URL_ENCODED = [(b"content-type", b"application/x-www-form-urlencoded")]


def test_url_encoded_forms_without_a_file_reach_the_app():
    # curl -d image_id=photo-42 -d 'points=[[1,1]]'
    answer = exchange(guard(), URL_ENCODED, [b"image_id=photo-42&points=%5B%5B1%2C1%5D%5D", b"&labels=[1]"])
    assert answer.status == 200 and seen == [{"fields": ["image_id", "labels", "points"], "tenant": None}]


@pytest.mark.parametrize("chunks", [[b"image=http%3A%2F%2F10.0.0.1%2Fx.png&points=[[1,1]]"],
                                    [b"points=[[1,1]]&ima%67e=http://10.0.0.1/x.png"],  # names are decoded too
                                    [b"points=[[1,1]]&im", b"age=http://10.0.0.1/x.png"]])
def test_a_file_field_in_a_url_encoded_form_is_415_and_never_downloaded(chunks):
    answer = exchange(guard(), URL_ENCODED, chunks)
    assert answer.status == 415 and answer.error() == (
        "`image` is a file, which a url-encoded form cannot carry: send the request as multipart/form-data "
        "(curl -F image=@photo.jpg), or name it by `image_url`")
    assert seen == []


@pytest.mark.parametrize("body, status, words", [
    (b"points=" + b"%5B" * 65 + b"%5D" * 65, 400, "form field `points` is nested more than 64 levels deep"),
    (b"&".join(b"f%d=1" % i for i in range(65)), 413, "the form has more than 64 fields"),
    (b"points=" + b"9" * 262_145, 413, "form field `points` is over 262144 bytes"),
])
def test_url_encoded_forms_are_checked_as_bentoml_will_read_them(body, status, words):
    answer = exchange(guard(max_upload_bytes=10**7), URL_ENCODED, [body])
    assert answer.status == status and answer.error() == words and seen == []


JSON = [(b"content-type", b"application/json")]


@pytest.mark.parametrize("body, words", [
    (b'{"image": "iVBORw0KGgo=", "points": [[1, 1]]}',
     "`image` is a file and cannot be sent in a JSON body (base64 neither): send the request as "
     "multipart/form-data (curl -F image=@photo.jpg), or name it by `image_url`"),
    (b'{"mask_input": "iVBORw0KGgo="}', "`mask_input` is a file and cannot be sent in a JSON body (base64 "
     "neither): send the request as multipart/form-data (curl -F mask_input=@mask.png)"),
    (b'[[1, 1]]', 'a JSON body must be an object of fields, e.g. {"image_id": "photo-42", "points": [[x, y]]}; '
     "got an array"),
    (b'{"points": [[1, 1]', "the body is not valid JSON (Expecting ',' delimiter: line 1 column 19 (char 18))"),
    (b'{"points": ' + b"[" * 65 + b"]" * 65 + b"}", "the JSON body is nested more than 64 levels deep"),
])
def test_json_bodies_pydantic_would_refuse_with_its_report_are_400_in_words(body, words):
    answer = exchange(guard(file_fields=("image", "mask_input")), JSON, [body[:10], body[10:]])
    assert answer.status == 400 and answer.error().startswith(words) and seen == []


def test_json_bodies_of_fields_reach_the_app():
    for body in (b'{"image_url": "s3://b/k.png", "points": [[1, 1]]}', b"", b"  "):
        assert exchange(guard(), JSON, [body]).status == 200
    assert [entry["bytes"] for entry in seen] == [49, 0, 2]


def test_bentomls_pickle_is_415_in_our_shape():
    answer = exchange(guard(), [(b"content-type", b"application/vnd.bentoml+pickle")], [b"\x80\x04."])
    assert answer.status == 415 and "multipart/form-data" in answer.error() and seen == []


# --- the time the body takes ---

def slow(**options) -> RequestGuard:
    return guard(max_upload_bytes=10**6, **options)


def test_a_trickling_body_is_408_soon_after_the_grace_period():
    # 10 bytes every 0.1 s = 100 B/s against a minimum of 1000 B/s after 0.3 s of grace
    answer = exchange(slow(min_upload_bytes_per_s=1000, upload_grace_s=0.3, body_timeout_s=20),
                      [], [b" " * 10] * 100, delay=0.1)
    assert answer.status == 408
    assert answer.headers[b"connection"] == b"close"
    assert "slower than 1000 bytes/s (SAM2_MIN_UPLOAD_BYTES_PER_S)" in answer.error()
    assert 0.3 <= answer.seconds < 0.6
    assert seen == []


def test_a_body_that_never_ends_is_408_at_the_total_deadline():
    # fast enough for the rate (no minimum here), but never complete
    answer = exchange(slow(min_upload_bytes_per_s=0, body_timeout_s=0.5), [], [b" "], delay=0.05, endless=True)
    assert answer.status == 408
    assert answer.error() == "the request body did not arrive within 0.5 s (SAM2_BODY_TIMEOUT_S)"
    assert 0.5 <= answer.seconds < 0.8


def test_a_silent_client_is_408_at_the_grace_period():
    answer = exchange(slow(min_upload_bytes_per_s=1000, upload_grace_s=0.3), [], [b" "], delay=5)
    assert answer.status == 408 and 0.3 <= answer.seconds < 0.5


def test_a_body_at_a_fair_rate_is_served():
    # 100 bytes every 0.02 s = 5000 B/s against a minimum of 1000 B/s
    answer = exchange(slow(min_upload_bytes_per_s=1000, upload_grace_s=0.1, body_timeout_s=5),
                      [], [b" " * 100] * 30, delay=0.02)
    assert answer.status == 200 and seen == [{"bytes": 3000, "tenant": None}]


def test_after_the_body_the_app_may_wait_on_receive_without_a_deadline():
    async def listens_after_the_body(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        try:
            await asyncio.wait_for(receive(), 0.4)  # e.g. Starlette watching for a disconnect
        except TimeoutError:
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = RequestGuard(listens_after_the_body, paths={"/segment"}, max_upload_bytes=100, body_timeout_s=0.2)
    assert exchange(guarded, [(b"content-length", b"1")], [b" "]).status == 204


# --- the form ---

def test_a_well_formed_form_reaches_the_app():
    headers, body = multipart(file("image", b"\x89PNG" * 10), field("points", b"[[1, 2]]"), file("unrelated", b""))
    answer = exchange(guard(), headers, [body[:50], body[50:]])
    assert answer.status == 200 and seen == [{"fields": ["image", "points", "unrelated"], "tenant": None}]


REFUSED_FORMS = {
    "image as a text field": (multipart(field("image", b"http://169.254.169.254/latest")), 400,
                              "`image` must be a file part (with a filename); to name an image by URL, send `image_url`"),
    "65 parts": (multipart(*[field(f"f{i}", b"1") for i in range(65)]), 413, "the form has more than 64 parts"),
    "1001 files": (multipart(*[file(f"f{i}", b"") for i in range(1001)]), 413, "more than 64 parts"),
    "a field over 256 KiB": (multipart(field("points", b"1" * (256 * 1024 + 1))), 413,
                             "form field `points` is over 262144 bytes"),
    "fields over 1 MiB together": (multipart(*[field(f"f{i}", b"[1] " * 50_000) for i in range(6)]), 413,
                                   "the form's fields other than the image are over 1048576 bytes together"),
    "a field nested 5000 deep": (multipart(field("points", b"[" * 5000 + b"]" * 5000)), 400,
                                 "form field `points` is nested more than 64 levels deep"),
    "a file part nested 5000 deep": (multipart(file("box", b"[" * 5000 + b"]" * 5000)), 400, "nested more than 64"),
    "a number of 5000 digits": (multipart(field("points", b"[[" + b"9" * 5000 + b", 1]]")), 400,
                                "form field `points` holds a number of more than 1000 digits"),
    "digits as UTF-16": (multipart(file("points", ("[[" + "9" * 5000 + ", 1]]").encode("utf-16-le"))), 400,
                         "more than 1000 digits"),
    "a file part that is not text": (multipart(file("points", b"[\xff]")), 400,
                                     "form field `points` is a file that is not text"),
    # curl -F file=@photo.jpg
    "an image under another name": (multipart(file("file", b"\xff\xd8\xff\xe0 a JPEG", "photo.jpg")), 400,
                                    "form field `file` is a file that is not text, and no file field of this API "
                                    "is called `file`: the image goes in `image` (curl -F image=@photo.jpg)"),
    "a part without a name": (multipart((b"Content-Disposition: form-data", b"1")), 400, "form part 1 has no name"),
    "a part without headers": (multipart((b"", b"1")), 400, "has no name"),
    "huge part headers": (multipart((b"X-Pad: " + b"a" * 20_000 + b"\r\n" + field("a", b"")[0], b"1")), 400,
                          "the multipart form is malformed: Maximum header size exceeded"),
    "100 part headers": (multipart((b"X-Pad: a\r\n" * 100 + field("a", b"")[0], b"1")), 400,
                         "the multipart form is malformed"),
    "no closing boundary": (([(b"content-type", b"multipart/form-data; boundary=XyZ")],
                             b"--XyZ\r\n" + field("points", b"[[1, 1]]")[0] + b"\r\n\r\n[[1, 1]]\r\n"), 400,
                            "ends before its closing boundary"),
    "garbage": (([(b"content-type", b"multipart/form-data; boundary=XyZ")], b"this is not a form"), 400,
                "the multipart form is malformed"),
    "no boundary": (([(b"content-type", b"multipart/form-data")], b"--\r\n"), 400, "needs a boundary"),
    "a boundary of 71 bytes": (([(b"content-type", b"multipart/form-data; boundary=" + b"b" * 71)], b""), 400,
                               "boundary is over 70 bytes"),
}


@pytest.mark.parametrize("case", REFUSED_FORMS)
def test_what_bentoml_would_make_a_500_of_is_a_4xx_first(case):
    (headers, body), status, words = REFUSED_FORMS[case]
    chunks = [body[i:i + 4096] for i in range(0, len(body), 4096)] or [b""]
    answer = exchange(guard(max_upload_bytes=10**7), headers, chunks)
    assert answer.status == status, answer.body
    assert words in answer.error()
    assert seen == []  # Starlette's parser never finished the form


def test_fields_the_api_ignores_pass_when_they_are_harmless():
    headers, body = multipart(field("colour", b"blue"), field("note", "naïve [[1]]".encode()),
                              field("big", b"[" * 64 + b"]" * 64), field("digits", b"9" * 1000))
    assert exchange(guard(max_upload_bytes=10**6), headers, [body]).status == 200
