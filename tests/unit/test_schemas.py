"""The request fields that schemas.py parses itself, and the responses' shape."""

from __future__ import annotations

import math

import pytest

from sam2_api.errors import InvalidField
from sam2_api.api.fields.common import parse_formats
from sam2_api.api.fields.segment import SegmentResponse, parse_polygon_tolerance
from sam2_api.maskformats import FORMATS


@pytest.mark.parametrize("value, expected", [
    (None, set()), ([], set()), (["rle"], {"rle"}), (["polygons", "rle", "rle"], {"rle", "polygons"}),
    ("rle", {"rle"}), ("rle, polygons", {"rle", "polygons"}),
])
def test_formats_are_a_list_or_comma_separated_names(value, expected):
    assert parse_formats(value, FORMATS) == tuple(f for f in FORMATS if f in expected)


@pytest.mark.parametrize("value", [["rle", "png"], "geojson", [1], {"rle": True}, True, ""])
def test_unknown_formats_are_refused_with_the_choices(value):
    with pytest.raises(InvalidField, match=r'^`formats` must be a list of "rle" and/or "polygons", e.g. \["rle"\]; got '):
        parse_formats(value, FORMATS)


@pytest.mark.parametrize("value, expected", [(None, 0.0), (0, 0.0), (1.5, 1.5), (3, 3.0)])
def test_polygon_tolerance_is_pixels(value, expected):
    assert parse_polygon_tolerance(value) == expected


@pytest.mark.parametrize("value", [-0.5, -1, math.inf, math.nan, "1", True, [1]])
def test_a_negative_or_non_number_tolerance_is_refused(value):
    with pytest.raises(InvalidField, match="^`polygon_tolerance` must be a number of pixels ≥ 0, e.g. 1.5; got "):
        parse_polygon_tolerance(value)


def test_formats_not_asked_for_are_left_out_of_the_response():
    fields = dict(mask_url=None, score=0.5, mask_id="m_x", bbox=[0, 0, 0, 0], area=0, width=2, height=1)
    assert set(SegmentResponse(**fields).model_dump(mode="json")) == {*fields}
    asked = SegmentResponse(**fields, rle={"size": [1, 2], "counts": "02"}, polygons=[])
    assert set(asked.model_dump(mode="json")) == {*fields, "rle", "polygons"}
    assert SegmentResponse(**fields).model_dump_json().count("null") == 1  # mask_url: null stays
