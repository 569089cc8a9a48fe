"""A mask file as SAM 2's low-resolution mask prompt: modes, orientation, size, errors."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from sam2_api.errors import ImageTooLarge, InvalidImage, InvalidMaskInput, UnsupportedImage
from sam2_api.maskinput import coverage, logits, low_res_mask, read_mask
from sam2_api.messages import LowResMask

LIMITS = (50_000_000, 16384)


def png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def test_a_left_half_mask_of_any_size_covers_the_left_half_of_the_cells():
    for width, height in [(1024, 512), (100, 300), (64, 64)]:
        pixels = np.zeros((height, width), dtype=np.uint8)
        pixels[:, : width // 2] = 255
        cells = coverage(read_mask(png(Image.fromarray(pixels)), *LIMITS))
        assert cells.shape == (256, 256) and cells.dtype == np.uint8
        assert (cells[:, :127] == 255).all() and (cells[:, 129:] == 0).all(), (width, height)


def test_area_averaging_gives_the_covered_fraction():
    mask = np.zeros((512, 512), dtype=bool)
    mask[0::2, :] = True  # every other row: each 2x2 cell half covered
    assert (coverage(mask) == 128).all()


@pytest.mark.parametrize("mode, value", [("1", 1), ("L", 7), ("P", 3), ("I;16", 300), ("I", 70000)])
def test_single_channel_modes_read_non_zero_as_object(mode, value):
    pixels = np.zeros((20, 30), dtype=np.int64)
    pixels[5:10, 10:20] = value
    if mode == "P":
        image = Image.fromarray(pixels.astype(np.uint8), "L").convert("P")
    elif mode == "1":
        image = Image.fromarray(pixels.astype(bool))
    else:
        image = Image.fromarray(pixels.astype({"L": np.uint8, "I;16": np.uint16, "I": np.int32}[mode]))
    assert image.mode == mode
    data = png(image) if mode != "I" else tiff(image)
    assert np.array_equal(read_mask(data, *LIMITS), pixels != 0)


def tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def test_exif_orientation_is_applied_as_for_the_image():
    upright = np.zeros((20, 40), dtype=np.uint8)
    upright[:5, :] = 255  # the top rows
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera stores orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    assert np.array_equal(read_mask(png(stored, exif=exif), *LIMITS), upright != 0)


@pytest.mark.parametrize("make, error, words", [
    (lambda: png(Image.new("RGB", (8, 8))), InvalidMaskInput, "must be a single-channel image .* this one is RGB"),
    (lambda: png(Image.new("LA", (8, 8))), InvalidMaskInput, "this one is LA"),
    (lambda: b"not an image at all", UnsupportedImage, "^`mask_input`: the file is not an image"),
    (lambda: png(Image.new("L", (8, 8)))[:40], InvalidImage, "^`mask_input`: "),
    (lambda: b"", InvalidImage, "^`mask_input`: the image file is empty"),
])
def test_what_is_not_a_mask_is_refused_with_a_clear_message(make, error, words):
    with pytest.raises(error, match=words):
        read_mask(make(), *LIMITS)


def test_size_bounds_hold_for_masks_too():
    with pytest.raises(ImageTooLarge, match="^`mask_input`: the image is 300x200 = 60000 pixels"):
        read_mask(png(Image.new("L", (300, 200))), 50_000, 16384)


def test_logits_are_minus_a_to_plus_a_over_the_coverage():
    cells = np.zeros((256, 256), dtype=np.uint8)
    cells[0, 0], cells[0, 1], cells[0, 2] = 255, 128, 0
    values = logits(LowResMask(coverage=cells.tobytes()), 10.0)
    assert values.shape == (256, 256) and values.dtype == np.float32
    assert values[0, 0] == 10.0 and values[0, 2] == -10.0 and abs(values[0, 1]) < 0.05


def test_what_crosses_is_one_byte_per_cell():
    mask = np.zeros((300, 451), dtype=np.uint8)
    mask[100:200, 100:300] = 255
    crossing = low_res_mask(png(Image.fromarray(mask)), *LIMITS)
    assert len(crossing.coverage) == 256 * 256
    with pytest.raises(ValueError):
        LowResMask(coverage=b"\0" * 100)


def mode_i_tiff(width: int, height: int) -> bytes:
    """A mode "I" (32-bit) mask, mostly background, deflated: a few hundred KB for tens of megapixels."""
    pixels = np.zeros((height, width), dtype=np.int32)
    pixels[height // 3: 2 * height // 3, width // 4: width // 2] = 7
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def test_a_mask_over_its_own_pixel_limit_is_refused_from_its_header():
    bomb = mode_i_tiff(16384, 3000)  # 49 megapixels in 277 KB: +733 MiB and 2.7 s when it was decoded
    assert len(bomb) < 300_000
    started = time.monotonic()
    with pytest.raises(ImageTooLarge) as refused:
        low_res_mask(bomb, 16_000_000, 16384)
    assert time.monotonic() - started < 1.5  # the header only (decoding it took 2.7 s)
    assert str(refused.value) == (
        "`mask_input`: the image is 16384x3000 = 49152000 pixels; the limit is 16000000 "
        "(SAM2_MASK_INPUT_MAX_PIXELS): send the mask smaller, it becomes 256x256 cells anyway")


def test_a_mask_file_over_its_byte_limit_is_refused_before_it_is_opened():
    noise = png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (1100, 1100), dtype=np.uint8)))
    assert len(noise) > 1024**2
    with pytest.raises(ImageTooLarge, match=r"^`mask_input` is \d+ bytes; the limit is 1048576 bytes "
                       r"\(SAM2_MASK_INPUT_MAX_BYTES\): send the mask smaller"):
        low_res_mask(noise, 16_000_000, 16384, max_bytes=1024**2)
    assert low_res_mask(noise, 16_000_000, 16384, max_bytes=2 * 1024**2).coverage  # within it: read


@pytest.mark.parametrize("mode", ["1", "L", "I"])
def test_the_coverage_is_the_area_average_of_the_object_pixels(mode):
    # What the conversion must keep (scripts/measure_mask_input.py, docs/REFINEMENT.md): each cell
    # the exact area average of the full-size 0/255 mask, at a ratio that is not a whole number.
    rng = np.random.default_rng(1)
    mask = rng.random((1000, 777)) < 0.3
    mask[200:700, 100:500] = True
    image = Image.fromarray(mask) if mode == "1" else Image.fromarray(
        mask.astype({"L": np.uint8, "I": np.int32}[mode]) * {"L": 200, "I": -5}[mode])
    assert image.mode == mode
    data = tiff(image)
    expected = cv2.resize(mask.astype(np.uint8) * 255, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.array_equal(np.frombuffer(low_res_mask(data, *LIMITS).coverage, np.uint8).reshape(256, 256), expected)


def test_a_large_legitimate_mask_costs_a_few_bytes_a_pixel():
    # 16 megapixels of mode "I": 4 bytes a pixel decoded; the object pixels and their 0/255 copy
    # add 2 more. It cost 248 MiB (15.5 B/px) in 4 full-size copies.
    script = (
        "import resource, sys; from sam2_api.maskinput import low_res_mask; "
        "data = sys.stdin.buffer.read(); "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "cells = low_res_mask(data, 16_000_000, 16384).coverage; "
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, cells.count(255))"
    )
    data = mode_i_tiff(4000, 4000)
    out = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, check=True).stdout.split()
    growth, full_cells = int(out[0]), int(out[1])
    assert full_cells == 85 * 64 - 64  # the object's cells (rows 1333-2666, columns 1000-2000), fully covered
    assert growth < 7 * 16_000_000 + 16 * 2**20, f"+{growth / 2**20:.0f} MiB"
