"""Seeded mutations of real images and of form fields, for the fuzz tests.

Deterministic: the same seed gives the same cases in the same order, so a failure is reproduced
by its seed and case number. The images start from the photos in ``tests/data`` and are written
in every accepted format and in the modes that take the decoders' rarer paths (16-bit, float,
1-bit, palette, CMYK, LAB, alpha), with EXIF, tiles and several pages.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

_SPECIAL_BYTES = (b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x00\x01", b"\x01\x00", b"\x00\x10", b"\x10\x00",
                  b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff")


def image_seeds(test_images: Path, size: tuple[int, int] = (40, 30)) -> dict[str, bytes]:
    """Small encodings of a real photo, named ``<format>-<mode>-<options>``."""
    photo = Image.open(test_images / "chelsea.png").convert("RGB").resize(size)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exif_transpose has work to do
    exif[0x010F] = "camera"
    modes = {mode: photo.convert(mode) for mode in ("RGB", "L", "1", "P", "LA", "RGBA", "CMYK", "I", "F", "LAB", "YCbCr")}
    modes["I;16"] = Image.fromarray(np.array(photo.convert("L"), dtype=np.uint16) * 257)
    variants = [("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("TIFF", {"tiled": True, "tile_size": (16, 16)}),
                ("TIFF", {"exif": exif}), ("PNG", {}), ("PNG", {"exif": exif}), ("JPEG", {"exif": exif}),
                ("WEBP", {"exif": exif}), ("GIF", {}), ("BMP", {})]
    seeds = {}
    for mode, image in modes.items():
        for fmt, options in variants:
            buffer = io.BytesIO()
            try:
                image.save(buffer, format=fmt, **options)
            except (OSError, ValueError, KeyError):
                continue  # a mode this format cannot store
            seeds[f"{fmt}-{mode}-{'-'.join(options)}"] = buffer.getvalue()
    pages = io.BytesIO()
    photo.save(pages, format="TIFF", save_all=True, append_images=[modes["L"], modes["CMYK"]])
    seeds["TIFF-pages-"] = pages.getvalue()
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-6 byte-level edits, most within the first 600 bytes (where the headers are)."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not data:  # deleted down to nothing: nothing left to edit
            break
        at = rng.randrange(min(len(data), 600)) if rng.random() < 0.7 else rng.randrange(len(data))
        edit = rng.random()
        if edit < 0.45:
            data[at] = rng.randrange(256)
        elif edit < 0.8:
            special = rng.choice(_SPECIAL_BYTES)
            data[at:at + len(special)] = special
        elif edit < 0.9:
            del data[at:at + rng.randint(1, 32)]
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
    return bytes(data)
