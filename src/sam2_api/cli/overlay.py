"""What ``--overlay`` draws, in the /ui page's colours: one mask with its prompt, or every object of a
label map in its own colour."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

# The overlay's look, the same as the /ui page's (RGB).
MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)
MASK_ALPHA = 0.5
OBJECT_COLOUR, BACKGROUND_COLOUR = (34, 197, 94), (239, 68, 68)
RING_COLOUR, BOX_COLOUR = (255, 255, 255), (250, 204, 21)


def mask_edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask's pixels within ``width`` pixels (a square's reach) of a pixel outside it; beyond
    the image counts as inside, so a mask that touches the image's edge has no edge line there."""
    height, image_width = mask.shape
    padded = np.pad(mask, width, constant_values=True)
    across = np.ones((height + 2 * width, image_width), dtype=bool)
    for dx in range(2 * width + 1):
        across &= padded[:, dx:dx + image_width]
    inner = np.ones_like(mask)
    for dy in range(2 * width + 1):
        inner &= across[dy:dy + height]
    return mask & ~inner


def draw_overlay(image: Image.Image, mask: np.ndarray, points: Sequence[Sequence[float]] = (),
                 labels: Sequence[int] = (), box: Sequence[float] | None = None) -> Image.Image:
    """The image with the mask tinted and outlined, and the prompt on top: each point a disc (green
    = object, red = background) in a white ring, the box a yellow frame.

    ``image``: the upright image, W×H; ``mask``: (H, W) bool; ``points`` ([x, y] each), ``labels``
    (1 = object, 0 = background; default 1) and ``box`` ([x1, y1, x2, y2]) in pixels of that image,
    x to the right and y down from its top-left corner, as sent to the server. Marker and line sizes
    grow with the image, so that they stay visible on large photos.
    """
    pixels = np.array(image.convert("RGB"), dtype=np.float32)
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.width}x{image.height}")
    radius = max(6, round(max(image.size) / 80))
    line = max(2, round(radius / 3))
    pixels[mask] = (1 - MASK_ALPHA) * pixels[mask] + MASK_ALPHA * MASK_COLOUR
    pixels[mask_edge(mask, line)] = MASK_COLOUR
    drawn = Image.fromarray(np.round(pixels).astype(np.uint8))
    pen = ImageDraw.Draw(drawn)
    if box is not None:
        pen.rectangle([round(c) for c in box], outline=BOX_COLOUR, width=line)
    labels = list(labels) + [1] * (len(points) - len(labels))
    for (x, y), label in zip(points, labels):
        pen.ellipse([x - radius, y - radius, x + radius, y + radius], outline=RING_COLOUR, width=line,
                    fill=OBJECT_COLOUR if label else BACKGROUND_COLOUR)
    return drawn


def overlay(image_bytes: bytes, rle: Mapping, points=(), labels=(), box=None) -> Image.Image:
    """``draw_overlay`` of an encoded image (EXIF orientation applied, as the server does) and the
    mask's COCO RLE as the server returns it (``{"size": [h, w], "counts": str}``)."""
    from pycocotools import mask as coco_mask  # only when an overlay is drawn

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes)))
    mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
    return draw_overlay(image, mask, points, labels, box)


GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def object_colour(label: int) -> tuple[int, int, int]:
    """The colour of object ``label`` (1-based): hues a golden-ratio step apart, so that neighbours in
    the list differ; the /ui page (everything.js) uses the same formula."""
    hue = (label * GOLDEN_RATIO_CONJUGATE) % 1.0
    sector, fraction = divmod(hue * 6, 1)
    value, saturation = 0.95, 0.75
    low = value * (1 - saturation)
    falling, rising = value * (1 - saturation * fraction), value * (1 - saturation * (1 - fraction))
    rgb = [(value, rising, low), (falling, value, low), (low, value, rising),
           (low, falling, value), (rising, low, value), (value, low, falling)][int(sector) % 6]
    return tuple(round(255 * c) for c in rgb)


def draw_objects(image: Image.Image, labels: np.ndarray) -> Image.Image:
    """The image with each object of the label map tinted in its own colour (:func:`object_colour`)
    and outlined where it meets another object or the background. ``labels``: ``(H, W)``, 0 = none,
    i = the i-th object, at the image's size (the /segment_everything label map)."""
    pixels = np.array(image.convert("RGB"), dtype=np.int32)
    if labels.shape != pixels.shape[:2]:
        raise ValueError(f"the label map is {labels.shape[1]}x{labels.shape[0]}, the image {image.width}x{image.height}")
    present = np.unique(labels)
    palette = np.zeros((int(present.max()) + 1, 3), dtype=np.int32)
    for label in present[present > 0]:
        palette[label] = object_colour(int(label))
    colours = palette[labels]
    inside = labels > 0
    # Half-way to the colour, rounding halves up: integer arithmetic that the page repeats exactly.
    pixels[inside] = (pixels[inside] + colours[inside] + 1) // 2
    across, down = labels[:, 1:] != labels[:, :-1], labels[1:, :] != labels[:-1, :]
    edge = np.zeros_like(inside)  # the pixels on either side of a change of label
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:, :] |= down
    edge[:-1, :] |= down
    edge &= inside
    pixels[edge] = colours[edge]
    return Image.fromarray(pixels.astype(np.uint8))
