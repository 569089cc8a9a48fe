"""The command line's own logic, without a server: the overlay's pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam2_api.cli import draw_overlay, mask_edge

GREEN, RED, WHITE, YELLOW = [34, 197, 94], [239, 68, 68], [255, 255, 255], [250, 204, 21]
BLUE = [30, 144, 255]
GREY = 100


def test_overlay_tints_and_outlines_the_mask_and_draws_the_prompt_on_top():
    image = Image.new("RGB", (200, 120), (GREY, GREY, GREY))  # markers of radius 6, lines 2 px wide
    mask = np.zeros((120, 200), dtype=bool)
    mask[40:100, 50:150] = True
    drawn = np.asarray(draw_overlay(image, mask, points=[[100, 70], [20, 20]], labels=[1, 0],
                                    box=[30, 30, 170, 110])).astype(int)
    assert drawn.shape == (120, 200, 3)

    assert drawn[60, 70].tolist() == [65, 122, 178]  # inside the mask: half-way from grey to blue
    assert drawn[40, 70].tolist() == drawn[41, 70].tolist() == BLUE  # its edge: an opaque line, 2 px
    assert drawn[42, 70].tolist() == [65, 122, 178]
    assert drawn[70, 100].tolist() == GREEN  # the object click, drawn over the mask
    assert drawn[70, 94].tolist() == drawn[70, 106].tolist() == WHITE  # its white ring
    assert drawn[20, 20].tolist() == RED  # the background click
    assert drawn[14, 20].tolist() == drawn[20, 26].tolist() == WHITE
    for y, x in [(30, 100), (31, 100), (110, 100), (70, 30), (70, 170)]:  # the box: 2 px inside its corners
        assert drawn[y, x].tolist() == YELLOW, (x, y)

    rows, cols = np.mgrid[:120, :200]
    prompt = (np.hypot(cols - 100, rows - 70) <= 8) | (np.hypot(cols - 20, rows - 20) <= 8)
    frame = ((rows >= 30) & (rows <= 110) & (cols >= 30) & (cols <= 170)
             & ~((rows >= 32) & (rows <= 108) & (cols >= 32) & (cols <= 168)))
    assert (drawn[~mask & ~prompt & ~frame] == GREY).all()  # nothing else changes


def test_overlay_without_labels_marks_every_click_as_object():
    image = Image.new("RGB", (64, 48), (0, 0, 0))
    drawn = np.asarray(draw_overlay(image, np.zeros((48, 64), dtype=bool), points=[[32, 24]]))
    assert drawn[24, 32].tolist() == GREEN
    assert not drawn[:5].any()  # no mask, no box: the rest stays black


def test_overlay_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="the mask is 10x10, the image 64x48"):
        draw_overlay(Image.new("RGB", (64, 48)), np.zeros((10, 10), dtype=bool))


def test_mask_edge_is_the_inner_band_of_the_given_width_and_not_the_image_border():
    mask = np.zeros((20, 30), dtype=bool)
    mask[:, :10] = True  # touches the image's top, left and bottom borders
    edge = mask_edge(mask, 2)
    assert edge.sum() == 2 * 20 and edge[:, 8:10].all()  # columns 8 and 9 only
