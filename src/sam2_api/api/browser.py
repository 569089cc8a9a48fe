"""Decoding in the browser: ``POST /embed`` (an image's embedding, once) and ``GET /decoder.onnx``
(SAM 2's prompt encoder + mask decoder as ONNX), so that a page decodes every click itself.

``/embed`` resolves the image exactly as ``/segment`` does (:meth:`sam2_api.api.segment.Pipeline.ask`:
the same cache key, tenancy, limits and errors) and answers the embedding of the model service's
cache as one ``.npz``: ``image_embeddings`` 1×256×64×64, ``image_features_0`` 1×32×256×256,
``image_features_1`` 1×64×128×128 (float16 unless ``dtype`` says float32) and
``original_image_size`` ``[H, W]`` (int32, upright). The ONNX decoder's inputs have the same names.

``/decoder.onnx`` is exported on the model side (:mod:`sam2_api.model.decoder_export`); each API
worker asks for its bytes once and serves them from memory, with an ``ETag`` (their SHA-256), so a
browser revalidates with a 304 instead of downloading them again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import zipfile
from urllib.parse import parse_qs
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import InvalidField, ModelUnavailable, RequestError
from ..messages_browser import DEFAULT_DECODER, EMBEDDING_SHAPES, DecoderReply, EmbedReply
from ..messages import RawImage
from ..server.asgi import send_json
from ..timing import StageTimer
from .answers import error_body
from .fields.segment import _documented
from .segment import ImageRequest, Pipeline, sized

log = logging.getLogger(__name__)

EMBED_ROUTE = "/embed"
DECODER_PATH = "/decoder.onnx"
DTYPES = ("float16", "float32")
NPZ_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date, in every member
NPZ_TYPE = "application/octet-stream"
ONNX_TYPE = "application/octet-stream"
EMBED_CACHE_CONTROL = "private, max-age=86400"  # an embedding of given bytes never changes (while the weights stay)
DECODER_CACHE_CONTROL = "no-cache"  # kept, but revalidated: a restart with other weights changes it

DtypeField = _documented(
    str, "The floats of the embedding: `float16` (default, about 8.4 MB) or `float32` (about 16.8 MB).",
    examples=["float16"],
)


class EmbedModel(Protocol):
    def embed(self, key: str, image: RawImage | None = None, dtype: str = "float16",
              model: str | None = None) -> EmbedReply: ...

    def decoder_onnx(self, name: str = DEFAULT_DECODER) -> DecoderReply: ...


@dataclass(frozen=True)
class Embedded:
    body: bytes  # the .npz
    etag: str
    width: int
    height: int
    cached: bool


def parse_dtype(dtype: Any) -> str:
    if dtype is None:
        return "float16"
    if dtype not in DTYPES:
        raise InvalidField(f"`dtype` must be \"float16\" or \"float32\"; got {str(dtype)[:40]!r}")
    return dtype


def embed(pipeline: Pipeline, request: ImageRequest, dtype: str, timer: StageTimer, tenant: str | None,
          model_id: str | None = None) -> Embedded:
    """The embedding of the request's image by size ``model_id`` (None: the default) as an ``.npz``,
    from the model service's cache."""
    model: EmbedModel = pipeline.model  # type: ignore[assignment]
    reply = pipeline.ask(request, lambda key, pixels: model.embed(key=key, image=pixels, dtype=dtype,
                                                                  **sized(model_id)), timer, tenant)
    with timer.stage("npz"):
        body = npz(reply.arrays, reply.height, reply.width)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Embedded(body, etag, reply.width, reply.height, reply.cached)


def npz(arrays: dict[str, np.ndarray], height: int, width: int) -> bytes:
    """The arrays and ``original_image_size`` as an uncompressed ``.npz`` (floats barely compress),
    as ``np.savez`` writes it but with a fixed time stamp: the same embedding, the same bytes (and ETag)."""
    for name, shape in EMBEDDING_SHAPES.items():
        if arrays[name].shape != shape:  # a model of another input size: the browser's decoder would not fit
            raise ValueError(f"{name} has shape {arrays[name].shape}, expected {shape}")
    buffer = io.BytesIO()
    every = {**arrays, "original_image_size": np.array([height, width], dtype=np.int32)}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in every.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_TIME), member.getvalue())
    return buffer.getvalue()


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether the caller's ``If-None-Match`` names ``etag`` (or ``*``)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


class DecoderSource:
    """This worker's copies of the ONNX decoders, by size: each asked of the model service once, then kept."""

    def __init__(self) -> None:
        self._model: EmbedModel | None = None
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str]] = {}  # size (DEFAULT_DECODER: the default) → bytes, ETag

    def bind(self, model: EmbedModel) -> None:
        self._model = model

    def fetch(self, name: str = DEFAULT_DECODER) -> tuple[bytes, str]:
        """The bytes and their ETag of size ``name``'s decoder; 503 while the model service exports
        them or cannot be reached."""
        with self._lock:
            if name not in self._files:
                if self._model is None:
                    raise ModelUnavailable("the service is starting; retry shortly")
                try:
                    reply = self._model.decoder_onnx(name=name)
                except Exception as exc:
                    log.warning("could not get the ONNX decoder from the model service: %s", type(exc).__name__)
                    raise ModelUnavailable("the model service is not reachable right now; retry shortly") from exc
                if reply.onnx is None:
                    raise ModelUnavailable("the ONNX decoder is being exported; retry in a few seconds"
                                           if reply.pending else f"the ONNX decoder is not available ({reply.error})")
                self._files[name] = reply.onnx, '"' + hashlib.sha256(reply.onnx).hexdigest()[:32] + '"'
            return self._files[name]


class DecoderFile:
    """ASGI middleware serving ``GET``/``HEAD /decoder.onnx[?model=SIZE]`` from :class:`DecoderSource`
    (BentoML's own routes take POST only). Put it inside :class:`sam2_api.api.guard.RequestGuard`, whose
    paths include :data:`DECODER_PATH`: the same API keys as every route. ``resolve``: a size's name →
    its served id, a 400 for any other (``Settings.model_for``)."""

    def __init__(self, app: Callable, *, source: DecoderSource, resolve: Callable[[Any], str] | None = None) -> None:
        self.app = app
        self.source = source
        self.resolve = resolve

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != DECODER_PATH:
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await send_json(send, 405, {"error": "use GET /decoder.onnx"}, [(b"allow", b"GET, HEAD")])
        import anyio

        try:
            name = self._size(scope.get("query_string", b""))
            onnx, etag = await anyio.to_thread.run_sync(self.source.fetch, name)
        except InvalidField as exc:
            return await send_json(send, exc.status, error_body(exc))
        except RequestError as exc:
            return await send_json(send, exc.status, error_body(exc), [(b"retry-after", b"5")])
        headers = [(b"etag", etag.encode()), (b"cache-control", DECODER_CACHE_CONTROL.encode())]
        if_none_match = dict(scope["headers"]).get(b"if-none-match", b"").decode("latin-1")
        if not_modified(if_none_match, etag):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})
        headers += [(b"content-type", ONNX_TYPE.encode()), (b"content-length", str(len(onnx)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else onnx})

    def _size(self, query: bytes) -> str:
        """The size ``?model=`` names (DEFAULT_DECODER when left out); 400 for several or another."""
        names = parse_qs(query.decode("latin-1")).get("model", [])
        if len(names) > 1:
            raise InvalidField("send one `model` query parameter, not several")
        if not names or self.resolve is None:
            return DEFAULT_DECODER
        return self.resolve(names[0])
