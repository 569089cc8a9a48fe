"""What a caller can get wrong, as one small hierarchy.

Each error carries the HTTP status it deserves and a message that tells the caller what to fix;
:mod:`sam2_api.api.answers` turns them into responses in one place (its decorator on every route).
"""

from __future__ import annotations

from http import HTTPStatus


class RequestError(Exception):
    """The request cannot be served as sent; the message says why."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST


class InvalidImage(RequestError):
    """The upload is empty, truncated or otherwise undecodable."""


class UnsupportedImage(RequestError):
    """The upload is not an image in a format we accept."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class ImageTooLarge(RequestError):
    """The image has more pixels than ``SAM2_MAX_IMAGE_PIXELS`` allows, or more bytes than an upload may."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    @classmethod
    def in_bytes(cls, max_bytes: int) -> "ImageTooLarge":
        return cls(f"the image is over {max_bytes} bytes (SAM2_MAX_UPLOAD_BYTES)")


class InvalidPrompt(RequestError):
    """Points, labels or box are malformed or do not fit the image."""


class InvalidField(RequestError):
    """A request field other than the prompt is malformed (e.g. ``image_id``)."""


class UnknownImageId(RequestError):
    """An ``image_id`` came without an image and is not in the embedding cache."""

    status = HTTPStatus.NOT_FOUND


class UnknownMaskId(RequestError):
    """A ``previous_mask_id`` this replica does not hold: never issued, evicted, or another caller's."""

    status = HTTPStatus.NOT_FOUND


class MaskIdOfAnotherImage(RequestError):
    """A ``previous_mask_id`` of the same caller, but issued for another image."""


class InvalidMaskInput(RequestError):
    """The ``mask_input`` file is not a mask this service can read (wrong mode, corrupt)."""


class MissingImage(RequestError):
    """Neither an image, an ``image_url`` nor an ``image_id`` was sent."""


class InvalidImageSource(RequestError):
    """``image_url`` is malformed, missing, or could not be fetched."""


class ForbiddenSource(RequestError):
    """``image_url`` points where this service may not read: a bucket not allowed, a private address."""

    status = HTTPStatus.FORBIDDEN


class Unauthorized(RequestError):
    """API keys are configured and the request carries none of them."""

    status = HTTPStatus.UNAUTHORIZED


class MalformedRequest(RequestError):
    """The HTTP request itself is ambiguous or unreadable: framing, headers, the form's structure."""


class BodyTooLarge(RequestError):
    """The request body, or one form field of it, is larger than this service accepts."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class BodyTimeout(RequestError):
    """The request body arrived too slowly, or not completely within the time allowed."""

    status = HTTPStatus.REQUEST_TIMEOUT


class UnsupportedContentType(RequestError):
    """The request body is in a media type the API does not read."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class ModelUnavailable(RequestError):
    """The model service cannot be reached (restarting, scaled to zero, overloaded): retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class ResponseTooLarge(RequestError):
    """The formats asked for would make the response larger than ``SAM2_MAX_RESPONSE_BYTES``: the
    request is valid, but not servable as asked (422); the message says what to reduce."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class DeadlineExceeded(RequestError):
    """The request would take longer than the service allows it; the message says what to reduce."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class UnsupportedVideo(RequestError):
    """The upload is not a video in a container and codec we accept."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InvalidVideo(RequestError):
    """The video is empty, truncated or otherwise undecodable."""


class VideoTooLarge(RequestError):
    """The video has more frames, pixels per frame, seconds or bytes than the limits allow."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class StorageUnavailable(RequestError):
    """Results that exist only on S3 were asked for, and no bucket is configured or reachable."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class TrackingCanceled(RequestError):
    """The tracking task was canceled before it finished."""

    status = HTTPStatus.CONFLICT


class TrackingTimeout(RequestError):
    """The tracking job ran longer than ``SAM2_VIDEO_JOB_TIMEOUT_S``."""

    status = HTTPStatus.GATEWAY_TIMEOUT


def by_name(name: str) -> type[RequestError]:
    """The :class:`RequestError` subclass called ``name`` (errors cross between services by name)."""
    found = {cls.__name__: cls for cls in _subclasses(RequestError)}.get(name)
    if found is None:
        raise LookupError(f"no request error called {name!r}")
    return found


def _subclasses(cls: type) -> list[type]:
    return [cls] + [found for sub in cls.__subclasses__() for found in _subclasses(sub)]


class ModelLoadError(RuntimeError):
    """The SAM 2 weights could not be resolved or loaded (a startup error, not a request error)."""
