"""A mask sent as a file (``mask_input``), turned into SAM 2's low-resolution mask prompt.

SAM 2's decoder takes a mask prompt as ``256×256`` logits in the frame of its ``1024×1024`` input,
which is the upright image stretched (not padded) to a square; a previous prediction's logits are
in that frame already. A mask file, of any size, is brought into it in three steps:

1. decoded on the API side: a single-channel image (1-bit, 8- or 16-bit grayscale, or palette
   indices), 0 = background, anything else = object, EXIF orientation applied. Its own small
   bounds (``SAM2_MASK_INPUT_MAX_BYTES``, ``SAM2_MASK_INPUT_MAX_PIXELS``), since it is stretched
   to 256×256 anyway, are checked from its length and header before a pixel is decoded. PNG and
   TIFF decode whole: the decoded image (1 to 4 bytes a pixel) is read in bands of rows into one
   bool per pixel, and the coverage below makes one 0/255 byte per pixel: at most 6 bytes a pixel
   in all, where full-size copies cost 15;
2. stretched to ``256×256`` cells by area averaging (:func:`coverage`): each cell holds the
   fraction f of it that the mask covers, as one byte (f × 255): 64 KiB cross to the model service;
3. on the model service, logits ``(2f − 1) · A`` (:func:`logits`): −A on the background, +A on
   the object, 0 across its edge, where A is ``SAM2_MASK_INPUT_LOGIT``.

``scripts/measure_mask_input.py`` compares conversions on the test images against what they
stand in for, the chained logits (docs/REFINEMENT.md): area averaging reproduces the chained mask
best of those tried, and A should be near the size of the model's own logits (10 by default:
what SAM 2's video predictor gives a mask it is handed).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .config import MASK_INPUT_MAX_BYTES
from .errors import ImageTooLarge, InvalidMaskInput, RequestError
from .imaging import decode_upright
from .messages import MASK_INPUT_SIDE, LowResMask

# Modes with one value per pixel; anything else (RGB, alpha) is refused rather than guessed at.
MASK_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
BAND_BYTES = 4 * 1024**2  # of the decoded image, copied out at a time
SMALLER = f"send the mask smaller, it becomes {MASK_INPUT_SIDE}x{MASK_INPUT_SIDE} cells anyway"


def read_mask(data: bytes, max_pixels: int, max_side: int, max_bytes: int = MASK_INPUT_MAX_BYTES) -> np.ndarray:
    """The ``(H, W)`` bool mask of a file (True = object), in the upright frame. Over ``max_bytes``,
    ``max_pixels`` or ``max_side``: 413, before a pixel is decoded."""
    if len(data) > max_bytes:
        raise ImageTooLarge(f"`mask_input` is {len(data)} bytes; the limit is {max_bytes} bytes "
                            f"(SAM2_MASK_INPUT_MAX_BYTES): {SMALLER}")
    try:
        return decode_upright(data, max_pixels, max_side, _object_pixels,
                              settings=("SAM2_MASK_INPUT_MAX_PIXELS", "SAM2_MAX_IMAGE_SIDE"))
    except ImageTooLarge as exc:
        raise ImageTooLarge(f"`mask_input`: {exc}: {SMALLER}") from None
    except RequestError as exc:
        raise type(exc)(f"`mask_input`: {exc}") from None


def _object_pixels(image: Image.Image) -> np.ndarray:
    if image.mode not in MASK_MODES:
        raise InvalidMaskInput(
            f"the mask must be a single-channel image (1-bit, grayscale or palette: 0 = background, "
            f"anything else = object); this one is {image.mode}"
        )
    width, height = image.size
    mask = np.empty((height, width), dtype=bool)
    rows = max(1, BAND_BYTES // (4 * width))
    for top in range(0, height, rows):  # not the whole image as an array at once: up to 4 bytes a pixel
        np.not_equal(np.asarray(image.crop((0, top, width, min(top + rows, height)))), 0, out=mask[top:top + rows])
    return mask


def coverage(mask: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` bool mask stretched to SAM 2's ``256×256`` cells: per cell, the fraction of it
    the mask covers, × 255, as uint8 (area averaging; smaller masks are interpolated bilinearly)."""
    return cv2.resize(np.multiply(mask, np.uint8(255), dtype=np.uint8), (MASK_INPUT_SIDE, MASK_INPUT_SIDE),
                      interpolation=cv2.INTER_AREA)


def low_res_mask(data: bytes, max_pixels: int, max_side: int, max_bytes: int = MASK_INPUT_MAX_BYTES) -> LowResMask:
    """A ``mask_input`` file as it crosses to the model service; the bounds as :func:`read_mask`'s."""
    return LowResMask(coverage=coverage(read_mask(data, max_pixels, max_side, max_bytes)).tobytes())


def logits(mask: LowResMask, amplitude: float) -> np.ndarray:
    """SAM 2's ``256×256`` float32 mask prompt for ``mask``: ``(2f − 1) · amplitude``."""
    fraction = np.frombuffer(mask.coverage, dtype=np.uint8).astype(np.float32) / 255
    return ((2 * fraction - 1) * np.float32(amplitude)).reshape(MASK_INPUT_SIDE, MASK_INPUT_SIDE)
