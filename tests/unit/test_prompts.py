"""Prompt validation: shape, cross-field rules, and fit to the image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sam2_api.errors import InvalidPrompt
from sam2_api.prompts import MAX_POINTS, Prompt


@pytest.mark.parametrize(
    "fields, words",
    [
        ({}, "at least one of `points` or `box`"),
        ({"points": []}, "at least one of `points` or `box`"),
        ({"points": [[1, 2]], "labels": [1, 0]}, "`labels` has 2 entries but `points` has 1"),
        ({"labels": [1]}, "`labels` were given without `points`"),
        ({"points": [[1, 2]], "labels": [2]}, r"`labels` must be a list with one 0 \(background\) or 1 "
                                              r"\(object\) per point, e.g. \[1, 0\] \(labels\[0\]: Input should be 0 or 1\)"),
        ({"points": [[math.nan, 2]]}, r"points\[0\]\[0\]: Input should be a finite number"),
        ({"points": [[1, math.inf]]}, r"points\[0\]\[1\]: Input should be a finite number"),
        ({"points": [[1, 2, 3]]}, r"`points` must be a list of \[x, y\] pairs in pixels, e.g. \[\[320, 200\]\] \(points\[0\]"),
        # The most common mistake: one click without the outer list.
        ({"points": [320, 200]}, r"^invalid prompt: `points` must be a list of \[x, y\] pairs in pixels, e.g. "
                                 r"\[\[320, 200\]\] \(points\[0\]: Input should be a valid list; points\[1\]"),
        ({"multimask_output": "maybe", "box": [0, 0, 1, 1]}, "`multimask_output` must be true or false"),
        ({"points": [[1, 2]] * (MAX_POINTS + 1)}, f"at most {MAX_POINTS} items"),
        ({"box": [10, 10, 10, 20]}, r"x2 > x1 and y2 > y1; got \[10.0, 10.0, 10.0, 20.0\]"),
        ({"box": [10, 30, 20, 20]}, "x2 > x1 and y2 > y1"),
        ({"box": [1, 2, 3]}, r"box"),
        ({"points": "here"}, r"points"),
        ({"points": [[1, 2]], "previous_mask_id": "abc"},
         r"`previous_mask_id` must be the `mask_id` of an earlier response, as it was returned"),
        ({"points": [[1, 2]], "previous_mask_id": 12}, r"`previous_mask_id` must be the `mask_id`"),
        ({"points": [[1, 2]], "candidates": "all"}, "`candidates` must be true or false"),
        ({"points": [[1, 2]], "candidates": True, "multimask_output": False},
         "`candidates` are SAM 2's three masks of multimask output"),
    ],
)
def test_malformed_prompts_say_what_is_wrong(fields, words):
    with pytest.raises(InvalidPrompt, match=words):
        Prompt.parse(**fields)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"points": [[100.5, 10]]}, r"point 0 \(100.5, 10.0\) is outside the 100x50 image"),
        ({"points": [[5, 5], [10, -1]]}, "point 1"),
        ({"points": [[1e30, 5]]}, "outside"),
        ({"box": [0, 0, 101, 50]}, r"box \[0.0, 0.0, 101.0, 50.0\] is outside the 100x50 image"),
        ({"box": [-1, 0, 50, 50]}, "outside"),
    ],
)
def test_coordinates_must_lie_on_the_image(fields, words):
    with pytest.raises(InvalidPrompt, match=words):
        Prompt.parse(**fields).check_fits(100, 50)


def test_image_edges_are_inside():
    Prompt.parse(points=[[0, 0], [100, 50]], box=[0, 0, 100, 50]).check_fits(100, 50)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"points": [[1, 1]]}, True),
        ({"points": [[1, 1], [2, 2]]}, False),
        ({"box": [0, 0, 5, 5]}, False),
        ({"points": [[1, 1]], "box": [0, 0, 5, 5]}, False),
        ({"points": [[1, 1]], "multimask_output": False}, False),
        ({"box": [0, 0, 5, 5], "multimask_output": True}, True),
    ],
)
def test_multimask_default_follows_sam2_advice(fields, expected):
    assert Prompt.parse(**fields).wants_multimask is expected


def test_arrays_for_the_model():
    prompt = Prompt.parse(points=[[1, 2], [3, 4]], labels=[1, 0], box=[0, 0, 5, 6])
    points, labels = prompt.point_arrays()
    assert points.dtype == np.float32 and points.tolist() == [[1, 2], [3, 4]]
    assert labels.dtype == np.int32 and labels.tolist() == [1, 0]
    assert prompt.box_array().tolist() == [0, 0, 5, 6]
    assert Prompt.parse(points=[[1, 2]]).point_arrays()[1].tolist() == [1]
    assert Prompt.parse(box=[0, 0, 5, 6]).point_arrays() == (None, None)


def test_candidates_turn_multimask_on_and_a_mask_id_passes_as_sent():
    assert Prompt(points=[[1, 2], [3, 4]], candidates=True).wants_multimask
    assert not Prompt(points=[[1, 2], [3, 4]]).wants_multimask
    mask_id = "m_AbCdEfGhIjKlMnOpQrSt-_"
    assert Prompt.parse(points=[[1, 2]], previous_mask_id=mask_id).previous_mask_id == mask_id
