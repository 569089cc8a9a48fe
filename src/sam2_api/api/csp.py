"""What a browser may load on this service's pages: the click-to-segment page (``/ui``) and the API
docs (``/``, Swagger UI).

Both pages share one origin with the API key that ``/ui`` keeps in ``sessionStorage``, so any script
either of them ran could read it. Each therefore runs scripts from this origin only (no inline
script: the pages have none) and sends requests to this origin only; ``/ui`` shows images and
videos from this origin, from files the user chose (``blob:``), and from the bucket its masks and
previews are stored in, and nothing else. BentoML's own docs page loads Google Tag Manager; ours
(``openapi.DOCS_PAGE``) loads Swagger UI from BentoML's bundled copy only.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from ..config import Settings
from .storage import object_url, shared_s3_client

# Swagger UI sets styles through the DOM, and its stylesheet draws icons from data: URIs.
DOCS_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# /ui cross-origin isolated, so that onnxruntime-web may decode clicks on several threads (SharedArrayBuffer):
# "credentialless" still shows the bucket's masks, fetched without credentials, where "require-corp"
# would need the bucket to send Cross-Origin-Resource-Policy.
CROSS_ORIGIN_ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "credentialless"}


def ui_policy(mask_origin: str | None) -> str:
    """The policy of ``/ui``'s pages; ``mask_origin``: where their mask and preview URLs point
    (:func:`mask_origin`), None when masks are not stored."""
    bucket = f" {mask_origin}" if mask_origin else ""
    # 'wasm-unsafe-eval': WebAssembly may be compiled (onnxruntime-web, vendored here), JavaScript still not eval'd
    return ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; "
            f"img-src 'self'{bucket}; media-src 'self' blob:{bucket}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def mask_origin(settings: Settings) -> str | None:
    """``scheme://host[:port]`` of the URLs the mask store hands out under ``settings`` (plain or
    presigned, on AWS or ``S3_ENDPOINT_URL``); None without a bucket, or without credentials to
    presign with. Presigned URLs are made by boto3 (its choice of host differs by region and bucket
    name), here for a sample key, without any network traffic."""
    bucket, region, endpoint = settings.s3_bucket_name_staging, settings.aws_region, settings.s3_endpoint_url
    if bucket is None:
        return None
    if settings.s3_url_mode == "public":
        url = object_url(bucket, settings.s3_mask_prefix, region, endpoint)
    else:
        client = shared_s3_client(region, endpoint)
        if client is None:
            return None
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": settings.s3_mask_prefix},
                                            ExpiresIn=60)
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class PageHeaders:
    """An ASGI app that is ``app`` with the headers ``headers()`` gives (name: value) added to each of
    its responses; ``headers`` is called once, at the first response (in the worker that serves it,
    not when the service is defined)."""

    def __init__(self, app: Callable[..., Awaitable[None]], headers: Callable[[], dict[str, str]],
                 skip: Callable[[str], bool] = lambda path: False) -> None:
        """``skip(path)``: the paths (as the app sees them) that get no added headers."""
        self.app = app
        self._make_headers = headers
        self._skip = skip
        self._headers: list[tuple[bytes, bytes]] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._skip(scope["path"]):
            return await self.app(scope, receive, send)
        if self._headers is None:
            self._headers = [(name.lower().encode(), value.encode()) for name, value in self._make_headers().items()]

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
