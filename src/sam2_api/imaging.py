"""Bytes to an upright RGB array, and a mask to a PNG.

Frames: every array here is row-major, ``(H, W[, C])``, in the pixel grid of the image *after*
its EXIF orientation has been applied — the same grid in which callers give their points.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLarge, InvalidImage, RequestError, UnsupportedImage

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# zlib level 1: about two thirds of the time of Pillow's default 6 for twice the bytes (a 4K mask:
# 36 ms / 108 KB against 53 ms / 55 KB, docs/PERFORMANCE.md). The encode competes with the next
# request for the CPU; bytes on S3 are cheap. (1-bit PNGs would be faster still, but the API
# promises 8-bit 0/255 masks, which every image library reads the same way.)
PNG_COMPRESS_LEVEL = 1
EXIF_ORIENTATION = 0x0112
T = TypeVar("T")


def load_upright_rgb(data: bytes, max_pixels: int, max_side: int) -> np.ndarray:
    """Decode an upload into an ``(H, W, 3)`` uint8 RGB array, EXIF orientation applied.

    Only the first frame of animated or multi-page files is used. Grayscale, palette, CMYK,
    alpha and 16-bit images are converted to 8-bit RGB (alpha is dropped). Images over
    ``max_pixels`` pixels or ``max_side`` pixels on a side are refused from their header, before
    any pixel is decoded.
    """
    return decode_upright(data, max_pixels, max_side, _to_rgb_array)


def decode_upright(data: bytes, max_pixels: int, max_side: int, convert: Callable[[Image.Image], T],
                   settings: tuple[str, str] | None = None) -> T:
    """``convert`` of the decoded first frame, EXIF orientation applied, with every failure of
    Pillow's (and of ``convert``) answered as our request errors; the size bounds as above, their
    413 naming ``settings`` (the pixel limit's and the side limit's) when given."""
    if not data:
        raise InvalidImage("the image file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow's decompression-bomb guard stays on; its warning becomes our 413 below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            _check_size(image.size, max_pixels, max_side, settings)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # not a copy of the whole image
            return convert(image)
    except (RequestError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image is too large: {exc}") from None
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed:
            raise InvalidImage(f"the file starts like a {claimed} but its header could not be read") from None
        raise UnsupportedImage(
            f"the file is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except Exception as exc:
        # On a hostile file Pillow's decoders raise whatever they trip over, not only OSError:
        # struct.error and TypeError from EXIF, OverflowError from TIFF tiles, ValueError from
        # a mode it cannot convert (tests/unit/test_imaging.py fuzzes them).
        raise InvalidImage(f"the image could not be decoded (truncated or corrupt?): {exc}") from None


def upright_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of the image once its EXIF orientation is applied, from its header alone
    (no pixel is decoded); None when the header cannot be read (decoding the image says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)  # a quarter turn, mirrored or not
    except Exception:
        return None
    return (height, width) if turned else (width, height)


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}


def _claimed_format(data: bytes) -> str | None:
    """The accepted format whose magic bytes ``data`` starts with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def _check_size(size: tuple[int, int], max_pixels: int, max_side: int, settings: tuple[str, str] | None) -> None:
    width, height = size
    pixels_setting, side_setting = (f" ({name})" for name in settings) if settings else ("", "")
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}{pixels_setting}"
        )
    if max(width, height) > max_side:
        # SAM 2 resizes every image to 1024x1024 through an intermediate of (longer side) x 1024
        # floats per channel: the side limit, not the pixel count, bounds that copy.
        raise ImageTooLarge(
            f"the image is {width}x{height}; the limit is {max_side} pixels on either side{side_setting}"
        )


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        # Pillow's convert("L") clips 16-bit values at 255; scale them to 8 bits instead.
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Pillow's own bytes, not a second copy: the array is read-only, and nothing writes to it.
    return np.asarray(image, dtype=np.uint8)


def pack_mask(mask: np.ndarray) -> bytes:
    """An ``(H, W)`` bool mask as bits, each row padded to whole bytes, first pixel in the high
    bit: ``np.packbits(mask, axis=1)``, which is also Pillow's raw layout of a mode "1" image."""
    return np.packbits(mask, axis=1).tobytes()


def unpack_mask(bits: bytes, height: int, width: int) -> np.ndarray:
    """The ``(H, W)`` bool mask of :func:`pack_mask`'s bits."""
    rows = np.frombuffer(bits, dtype=np.uint8).reshape(height, -1)
    return np.unpackbits(rows, axis=1, count=width).view(np.bool_)


def mask_png(bits: bytes, height: int, width: int) -> bytes:
    """The mask of :func:`pack_mask`'s bits as a single-channel 8-bit PNG: 0 background, 255
    object. Pillow reads the bits as they are (no unpacked copy) and widens them to 0/255."""
    buffer = io.BytesIO()
    Image.frombytes("1", (width, height), bits).convert("L").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()
