"""Decoding uploads into upright 8-bit RGB, refusing what is not an image, encoding masks."""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from sam2_api.errors import ImageTooLarge, InvalidImage, RequestError, UnsupportedImage
from sam2_api.imaging import load_upright_rgb, mask_png, pack_mask, unpack_mask
from tests.mutations import image_seeds, mutate

LIMIT = 50_000_000
SIDE = 16384


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def corner_marked() -> Image.Image:
    """A 40x20 RGB image, black with a red 4x2 block at its top-left corner."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:2, :4] = (255, 0, 0)
    return Image.fromarray(pixels)


# EXIF orientation → where the red top-left block lands once the image is made upright.
ORIENTATIONS = {
    1: ((20, 40), (0, 0)), 2: ((20, 40), (0, 39)), 3: ((20, 40), (19, 39)), 4: ((20, 40), (19, 0)),
    5: ((40, 20), (0, 0)), 6: ((40, 20), (0, 19)), 7: ((40, 20), (39, 19)), 8: ((40, 20), (39, 0)),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(corner_marked, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(corner_marked, "PNG", exif=exif)
    rgb = load_upright_rgb(data, LIMIT, SIDE)
    shape, (row, col) = ORIENTATIONS[orientation]
    assert rgb.shape == (*shape, 3)
    assert tuple(rgb[row, col]) == (255, 0, 0)
    assert rgb[:, :, 0].astype(bool).sum() == 8  # the block moved, nothing else turned red


@pytest.mark.parametrize(
    "mode, fmt, params",
    [("L", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("CMYK", "JPEG", {"quality": 100}),
     ("RGB", "WEBP", {"lossless": True}), ("RGB", "BMP", {}), ("RGB", "TIFF", {}), ("P", "GIF", {})],
)
def test_modes_and_formats_become_8bit_rgb(mode, fmt, params):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # 8x64 horizontal ramp
    source = Image.fromarray(np.stack([gray] * 3, axis=-1))
    source = source.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else source.convert(mode)
    rgb = load_upright_rgb(encode(source, fmt, **params), LIMIT, SIDE)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 64, 3)
    tolerance = 8 if fmt == "JPEG" else 0
    assert np.abs(rgb[..., 1].astype(int) - gray).max() <= tolerance


def test_16bit_png_is_scaled_not_clipped():
    wide = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    rgb = load_upright_rgb(encode(Image.fromarray(wide), "PNG"), LIMIT, SIDE)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 255, 255), (0, 0, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert load_upright_rgb(data, LIMIT, SIDE).min() == 255


def test_returned_array_is_pillows_pixels_without_another_copy():
    pixels = load_upright_rgb(encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG"), LIMIT, SIDE)
    assert (pixels.dtype, pixels.shape, pixels.flags.c_contiguous) == (np.uint8, (4, 4, 3), True)
    assert not pixels.flags.writeable and pixels[3, 3].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "data, error, words",
    [
        (b"", InvalidImage, "empty"),
        (b"hello, I am text pretending to be a PNG", UnsupportedImage, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, InvalidImage, "starts like a PNG but its header could not be read"),
        (encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")[:-200], InvalidImage, "truncated"),
        (encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:300], InvalidImage, "truncated"),
    ],
    ids=["empty", "text", "broken png header", "truncated png", "truncated jpeg"],
)
def test_bad_uploads_are_refused_with_a_reason(data, error, words):
    with pytest.raises(error, match=words):
        load_upright_rgb(data, LIMIT, SIDE)


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (300, 200)), "PNG")
    with pytest.raises(ImageTooLarge, match="300x200 = 60000 pixels; the limit is 59999"):
        load_upright_rgb(data, 59_999, SIDE)
    assert load_upright_rgb(data, 60_000, SIDE).shape == (200, 300, 3)


def test_decompression_bomb_is_refused():
    # A 1-bit PNG declaring 30000x30000 compresses to a few hundred KB.
    bomb = encode(Image.new("1", (30_000, 30_000)), "PNG")
    with pytest.raises(ImageTooLarge):
        load_upright_rgb(bomb, 2_000_000_000, 100_000)


def test_side_limit_refuses_thin_images_of_any_aspect_ratio_before_decoding():
    # 1 x 200000 is 200000 pixels, well inside the pixel limit; SAM 2's resize would make a
    # 200000 x 1024 float copy of it (2.4 GB). Its header alone decides.
    thin = encode(Image.new("L", (1, 200_000)), "PNG")
    assert len(thin) < 2000
    with pytest.raises(ImageTooLarge, match="1x200000; the limit is 16384 pixels on either side"):
        load_upright_rgb(thin, LIMIT, SIDE)
    wide = encode(Image.new("L", (16_385, 1)), "PNG")
    with pytest.raises(ImageTooLarge, match="16385x1"):
        load_upright_rgb(wide, LIMIT, SIDE)
    assert load_upright_rgb(encode(Image.new("L", (16_384, 2)), "PNG"), LIMIT, SIDE).shape == (2, 16_384, 3)


@pytest.mark.parametrize("height, width", [(3, 5), (7, 8), (427, 640), (300, 451), (1, 1)])
def test_packed_masks_round_trip_and_become_0_255_pngs_at_mask_size(height, width):
    mask = np.random.default_rng(height * width).random((height, width)) > 0.5
    bits = pack_mask(mask)
    assert len(bits) == height * ((width + 7) // 8)  # rows padded to whole bytes
    assert np.array_equal(unpack_mask(bits, height, width), mask)
    png = Image.open(io.BytesIO(mask_png(bits, height, width)))
    assert (png.format, png.mode, png.size) == ("PNG", "L", (width, height))
    assert np.array_equal(np.array(png), mask.astype(np.uint8) * 255)




@pytest.mark.parametrize("seed", [1, 3, 4])
def test_mutated_images_are_decoded_or_refused_with_our_error(test_images, seed):
    """5,000 seeded mutations of real photos in every format and mode the decoders know: each one
    is an upright 8-bit RGB array or one of our RequestErrors, never another exception (which
    the service would answer with a 500). The three seeds reached escapes before the fix
    (OverflowError from TIFF tiles, struct.error from EXIF, ValueError from an LA TIFF)."""
    seeds = image_seeds(test_images)
    names = sorted(seeds)
    rng = random.Random(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the broken files we made on purpose
        for case in range(5000):
            name = rng.choice(names)
            data = mutate(seeds[name], rng)
            try:
                pixels = load_upright_rgb(data, LIMIT, SIDE)
            except RequestError:
                continue
            except Exception as exc:
                pytest.fail(f"seed {seed} case {case} ({name}): {type(exc).__name__}: {exc}")
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, (seed, case, name)


def test_upright_size_reads_the_header_and_turns_with_exif():
    from sam2_api.imaging import upright_size

    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn: the upright image is 30 wide and 40 high
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buffer, format="JPEG", exif=exif)
    assert upright_size(buffer.getvalue()) == (30, 40)
    assert upright_size(buffer.getvalue()) == load_upright_rgb(buffer.getvalue(), 10**6, 10**4).shape[1::-1]
    buffer = io.BytesIO()
    Image.new("L", (40, 30)).save(buffer, format="PNG")
    assert upright_size(buffer.getvalue()) == (40, 30)
    assert upright_size(b"not an image") is None
