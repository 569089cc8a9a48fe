"""The HTTP side of ``sam2-api``: one thin client per thread, the image read from wherever it is, a
refused API key in the command line's own words."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

import httpx

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TIMEOUT = 300.0
REFERENCE_SCHEMES = ("s3://", "https://")


class CommandError(Exception):
    """What stops a command, in one line for the person who typed it."""


class Client:
    """A thin client for POST /segment; one per thread (httpx clients are not shared)."""

    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.has_key = bool(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def segment(self, image: str, fields: dict, mask_input: Path | None = None) -> httpx.Response:
        """POST /segment: ``image`` a path or a URL, ``fields`` the JSON fields, ``mask_input`` a mask file."""
        return self.post("/segment", image, fields, {"mask_input": mask_input} if mask_input else {})

    def everything(self, image: str, fields: dict) -> httpx.Response:
        return self.post("/segment_everything", image, fields)

    def post(self, route: str, image: str, fields: dict, other_files: dict[str, Path] | None = None) -> httpx.Response:
        form = {name: json.dumps(value) for name, value in fields.items() if value is not None}
        if image.startswith(REFERENCE_SCHEMES):
            form["image_url"] = json.dumps(image)
            files = {"none": ("", b"")}  # keeps the request multipart
        else:
            files = {"image": (Path(image).name, Path(image).read_bytes())}
        for name, path in (other_files or {}).items():
            files[name] = (path.name, path.read_bytes())
        return self.http.post(route, data=form, files=files)


def read_image(source: str, timeout: float) -> bytes:
    """The image's bytes, wherever it is (S3 with the caller's own AWS credentials)."""
    if source.startswith("https://"):
        response = httpx.get(source, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
        return response.content
    if source.startswith("s3://"):
        try:
            import boto3  # not installed with the client alone: pip install "sam2-api[s3]"
        except ImportError:
            raise CommandError(f"reading {source} needs boto3: pip install 'sam2-api[s3]'") from None

        bucket, _, key = source.removeprefix("s3://").partition("/")
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(source).read_bytes()


def check_api_key(response: httpx.Response, client: Client) -> None:
    """A 401 as the command line's own words (the server's speak of HTTP headers)."""
    if response.status_code == 401:
        raise CommandError(refused_key_advice(client.has_key))


def refused_key_advice(had_key: bool) -> str:
    if had_key:
        return "the server refused this API key (--api-key, or SAM2_API_KEY in the environment)"
    return "the server wants an API key: pass --api-key KEY, or set SAM2_API_KEY in the environment"


def printed_body(response: httpx.Response, client: Client, leave_out: Iterable[str] = ()) -> dict:
    """The response's JSON (or its text as an error), printed without the fields ``leave_out``;
    all of it is returned. A 401 raises :class:`CommandError` instead."""
    check_api_key(response, client)
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    print(json.dumps({name: value for name, value in body.items() if name not in leave_out}, indent=2))
    return body


def overlay_source(body: dict, field: str, timeout: float) -> bytes | None:
    """The stored PNG that the response's ``field`` names, for an overlay; None (and why, on stderr)
    when the server stored none."""
    if not body.get(field):
        print(f"no overlay: the server returned no {field} (S3 not configured there?)", file=sys.stderr)
        return None
    stored = httpx.get(body[field], timeout=timeout)
    stored.raise_for_status()
    return stored.content
