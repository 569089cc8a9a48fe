"""The image of a Label Studio task, fetched from where its URL points.

A task's image field holds one of:

- a path on Label Studio's own server: ``/data/upload/<project>/<file>`` (an uploaded file),
  ``/data/local-files/?d=<path>`` (local storage), ``/tasks/<id>/resolve/?fileuri=...`` (cloud
  storage through Label Studio). It is fetched from ``LABEL_STUDIO_URL`` with ``Authorization: Token
  <LABEL_STUDIO_API_KEY>``, as Label Studio's own ML backends do. An absolute URL of exactly that
  origin (scheme, host and port) is fetched the same way. Only those file routes (:data:`FILE_ROUTES`,
  without ``.``/``..`` segments, encoded or not): the token may do anything that Label Studio's API
  allows, and a task's URL is whatever its importer wrote. This one origin is exempt from the rule
  that image URLs must reach public addresses (Label Studio usually runs beside this service, on a
  private network); the token goes to it and nowhere else, and its redirects are not followed.
- ``s3://bucket/key`` from a bucket in ``S3_INPUT_BUCKETS``, or a public ``https://`` URL: the same
  rules as /segment's ``image_url`` (:class:`sam2_api.api.image_urls.ImageSources`).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ForbiddenSource, InvalidImageSource
from .fields.common import shown
from .image_urls import MAX_URL_LENGTH, ImageLoader, ImageSources
from .web_fetch import WebAddress, WebFetcher, parse_web_url

_SCHEMES = ("http", "https")
# Where Label Studio serves a task's file (label_studio/data_import/urls.py, io_storages/urls.py):
# uploads, local storage, and cloud storage resolved (or presigned) through a task or a project.
FILE_ROUTES = re.compile(r"/(data/upload/|data/local-files/|storage-data/uploaded/|(tasks|projects)/[0-9]+/"
                         r"(resolve|presign)/)")


class TaskImages:
    """``locate(url, field)``: a loader of the task's image, after every check that needs no network."""

    def __init__(self, sources: ImageSources, max_bytes: int, label_studio_url: str | None = None,
                 api_key: str | None = None, fetcher: WebFetcher | None = None) -> None:
        self._sources = sources
        self._origin: WebAddress | None = None
        self._base = self._base_path = ""
        if label_studio_url:
            self._origin = parse_web_url(label_studio_url, _SCHEMES, field="LABEL_STUDIO_URL")
            self._base_path = urlsplit(label_studio_url).path.rstrip("/")
            self._base = f"{self._origin.scheme}://{self._origin.authority}{self._base_path}"
        self._headers = [(b"Authorization", b"Token " + api_key.encode())] if api_key else []
        # Label Studio's own host may be on a private network: any address it resolves to will do.
        self._fetcher = fetcher or WebFetcher(max_bytes=max_bytes, may_connect=lambda ip: True)

    def locate(self, url: Any, field: str) -> ImageLoader:
        if not isinstance(url, str) or not url:
            raise InvalidImageSource(f"`{field}` must be the URL of the task's image; got {shown(url)}")
        if len(url) > MAX_URL_LENGTH:
            raise InvalidImageSource(f"`{field}` is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
        if any(char.isspace() or not char.isprintable() for char in url):
            raise InvalidImageSource(f"`{field}` may not contain spaces or control characters")
        if url.startswith("/") and not url.startswith("//"):  # "//host/..." would be another host
            return self._from_label_studio(url, field)
        if self._origin is not None and url.split("://", 1)[0].lower() in _SCHEMES:
            try:
                address = parse_web_url(url, _SCHEMES, field=f"`{field}`")
            except InvalidImageSource:
                address = None
            if address is not None and (address.scheme, address.host, address.port) == (
                    self._origin.scheme, self._origin.host, self._origin.port):
                path = urlsplit(url).path
                self._check_file_route(path[len(self._base_path):] if path.startswith(self._base_path) else "", field)
                return partial(self._get, address)
        return self._sources.locate(url, f"`{field}`")

    def _from_label_studio(self, path: str, field: str) -> ImageLoader:
        if self._origin is None:
            raise InvalidImageSource(
                f"`{field}` is {shown(path)}, a file that Label Studio serves: set LABEL_STUDIO_URL (Label "
                "Studio's address as this service reaches it) and LABEL_STUDIO_API_KEY on this service "
                "(docs/LABEL_STUDIO.md)"
            )
        self._check_file_route(urlsplit(path).path, field)
        return partial(self._get, parse_web_url(self._base + path, _SCHEMES, field=f"`{field}`"))

    @staticmethod
    def _check_file_route(path: str, field: str) -> None:
        """403 unless ``path`` (below LABEL_STUDIO_URL) is one of Label Studio's file routes."""
        segments = re.split(r"[/\\]", unquote(path))
        if not FILE_ROUTES.match(path) or "." in segments or ".." in segments:
            raise ForbiddenSource(
                f"`{field}` is not a file that Label Studio serves (/data/upload/..., /data/local-files/?d=..., "
                "/storage-data/uploaded/..., /tasks/<id>/resolve/?fileuri=..., /projects/<id>/resolve/...): "
                "LABEL_STUDIO_API_KEY goes to those routes only")

    def _get(self, address: WebAddress) -> bytes:
        try:
            return self._fetcher.get(address, self._headers)
        except InvalidImageSource as exc:  # said without Label Studio's address, which may be an internal one
            said = str(exc).replace(f"{address.scheme}://{address.authority}", "LABEL_STUDIO_URL")
            said = said.replace(repr(address.host), "of LABEL_STUDIO_URL")
            raise InvalidImageSource(f"{said} (Label Studio, with LABEL_STUDIO_API_KEY)") from None
