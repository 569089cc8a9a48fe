"""Segment everything's parameters: Meta's names and defaults, one message per malformed field,
and the bounds an image's size sets (points, crop layers, the memory of one batch)."""

from __future__ import annotations

import inspect

import pytest
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

from sam2_api.errors import InvalidField
from sam2_api.messages import BYTES_PER_MASK_PIXEL, DECODER_BYTES_PER_POINT, EverythingLimits, EverythingParams, default_points_per_batch
from sam2_api.api.fields.everything import parse_output, parse_params

LIMITS = EverythingLimits()


def test_defaults_are_meta_generators_and_every_parameter_reaches_it():
    meta = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    kwargs = EverythingParams().generator_kwargs(points_per_batch=64)
    for name, value in kwargs.items():
        assert meta[name].default == value, name
    assert set(meta) - set(kwargs) == {"self", "model", "mask_threshold", "point_grids", "output_mode", "kwargs"}


def test_a_grid_left_out_is_the_devices_default_and_a_grid_asked_for_stays():
    """Meta's 32 on a GPU; on a CPU its 1,024 prompts ran past the 60 s deadline (issue 18): 8 there."""
    left_out = parse_params()
    assert left_out.points_per_side is None  # the API service does not know the device; the model service does
    assert left_out.with_default_grid("cuda").points_per_side == 32
    assert left_out.with_default_grid("cpu").points_per_side == 8
    assert left_out.with_default_grid("cpu").generator_kwargs(points_per_batch=64)["points_per_side"] == 8
    assert left_out.with_default_grid("cpu").plan(451, 300, LIMITS).points == 64
    assert parse_params(points_per_side=32).with_default_grid("cpu").points_per_side == 32


def test_fields_are_read_with_their_types():
    params = parse_params(points_per_side=16, pred_iou_thresh=0, stability_score_offset=0.5, use_m2m=True,
                          crop_n_layers=None, max_objects=10)
    assert (params.points_per_side, params.pred_iou_thresh, params.use_m2m, params.max_objects) == (16, 0.0, True, 10)
    assert params.crop_n_layers == 0 and params.points_per_batch is None


@pytest.mark.parametrize("fields, words", [
    ({"points_per_side": 65}, "`points_per_side` (points along each side of the image) must be an integer from 1 to 64; got 65"),
    ({"points_per_side": 8.5}, "must be an integer from 1 to 64; got 8.5"),
    ({"points_per_side": True}, "must be an integer from 1 to 64; got True"),
    ({"points_per_side": "32"}, "must be an integer from 1 to 64; got '32'"),
    ({"crop_n_layers": 3}, "`crop_n_layers` (crop layers) must be an integer from 0 to 2; got 3"),
    ({"pred_iou_thresh": 1.5}, "`pred_iou_thresh` (the lowest predicted IoU kept) must be a number from 0 to 1"),
    ({"box_nms_thresh": float("nan")}, "`box_nms_thresh`"),
    ({"crop_overlap_ratio": 1}, "from 0 to 0.99"),
    ({"max_objects": 0}, "`max_objects` (the most objects returned, largest first) must be an integer from 1 to 1024"),
    ({"use_m2m": "yes"}, "`use_m2m` must be true or false; got 'yes'"),
    ({"multimask_output": 1}, "`multimask_output` must be true or false; got 1"),
])
def test_malformed_fields_get_one_message_in_words(fields, words):
    with pytest.raises(InvalidField) as caught:
        parse_params(**fields)
    assert words in str(caught.value)


def test_output_options():
    assert parse_output(["polygons", "rle", "rle"], 1.5, False) == parse_output(["rle", "polygons"], 1.5, False)
    options = parse_output()
    assert (options.formats, options.polygon_tolerance, options.per_object_masks) == ((), 0.0, True)
    assert parse_output("rle").formats == ("rle",)  # as /segment reads it: one parser for both routes
    for bad, words in [(dict(formats=7), "`formats` must be a list"), (dict(formats=["png"]), '"rle" and/or "polygons"'),
                       (dict(polygon_tolerance=-1), "`polygon_tolerance` must be a number of pixels ≥ 0"),
                       (dict(per_object_masks="no"), "`per_object_masks` must be true or false")]:
        with pytest.raises(InvalidField, match=words):
            parse_output(**bad)


def test_the_plan_counts_meta_generators_points_over_crop_layers():
    plan = EverythingParams(points_per_side=32, crop_n_layers=2, crop_n_points_downscale_factor=2).plan(1024, 768, LIMITS)
    assert plan.points == 1024 + 4 * 256 + 16 * 64
    assert plan.points_per_batch == 64


def test_more_points_than_pixels_or_than_the_service_allows_is_refused_naming_the_limit():
    with pytest.raises(InvalidField, match=r"32 points per side do not fit the image \(20x40 pixels\): at most 20 for "
                                           "this 20x40 image; lower points_per_side$"):
        EverythingParams().plan(20, 40, LIMITS)
    with pytest.raises(InvalidField, match=r"64 points per side do not fit the crops of layer 2 \(38x38 pixels\): at "
                                           "most 38 for this 100x100 image; lower points_per_side or crop_n_layers"):
        EverythingParams(points_per_side=64, crop_n_layers=2).plan(100, 100, EverythingLimits(max_points=10**6))
    with pytest.raises(InvalidField, match=r"means 21504 decoder points \(1×1024 \+ 4×1024 \+ 16×1024\); the limit is "
                                           r"16384 \(SAM2_EVERYTHING_MAX_POINTS\)"):
        EverythingParams(crop_n_layers=2).plan(2000, 1500, LIMITS)
    with pytest.raises(InvalidField, match="crop layer 2 would get no points"):
        EverythingParams(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=3).plan(500, 500, LIMITS)


def test_points_per_batch_is_lowered_to_the_memory_bound_or_refused_when_given():
    width, height = 4000, 3000
    per_point = DECODER_BYTES_PER_POINT + BYTES_PER_MASK_PIXEL * 3 * width * height
    fits = LIMITS.max_batch_bytes // per_point
    assert 1 <= fits < 64
    plan = EverythingParams().plan(width, height, LIMITS)
    assert plan.points_per_batch == fits and plan.batch_bytes == fits * per_point <= LIMITS.max_batch_bytes
    assert EverythingParams(multimask_output=False).plan(width, height, LIMITS).points_per_batch > fits
    with pytest.raises(InvalidField, match=f"use points_per_batch ≤ {fits}, or leave it out"):
        EverythingParams(points_per_batch=fits + 1).plan(width, height, LIMITS)
    assert EverythingParams().plan(1024, 1024, LIMITS).points_per_batch == 64  # Meta's default at this size
    with pytest.raises(InvalidField, match="too large for segment everything"):
        EverythingParams().plan(width, height, EverythingLimits(max_batch_bytes=per_point - 1))


def test_points_per_batch_left_out_is_the_devices_default_within_the_memory_bound():
    assert (default_points_per_batch("cuda"), default_points_per_batch("cpu")) == (64, 4)
    assert EverythingParams().plan(1024, 1024, LIMITS, default_batch=4).points_per_batch == 4
    assert EverythingParams(points_per_batch=16).plan(1024, 1024, LIMITS, default_batch=4).points_per_batch == 16
    tight = EverythingLimits(max_batch_bytes=3 * (DECODER_BYTES_PER_POINT + BYTES_PER_MASK_PIXEL * 3 * 1024 * 1024))
    assert EverythingParams().plan(1024, 1024, tight, default_batch=4).points_per_batch == 3


def test_the_response_leaves_out_formats_not_asked_for_but_keeps_a_null_mask_url_and_why():
    import json

    from sam2_api.api.everything import EverythingResult, FoundObject
    from sam2_api.api.fields.everything import EverythingResponse
    from sam2_api.api.storage import Upload

    plain = FoundObject(Upload(None, "s3 unreachable"), {"bbox": [0, 0, 2, 1], "area": 2}, 0.9, 0.95, [[0.5, 0.5]])
    rle = FoundObject(Upload("https://masks/1.png"),
                      {"bbox": [0, 0, 1, 1], "area": 1, "rle": {"size": [1, 2], "counts": "01"}}, 0.8, 0.9, [[1.5, 0.5]])
    body = json.loads(EverythingResponse.of(EverythingResult([plain, rle], Upload("https://masks/l.png"), 2, 1, False, 2))
                      .model_dump_json())
    assert body == {
        "objects": [
            {"mask_url": None, "mask_error": "s3 unreachable", "bbox": [0, 0, 2, 1], "area": 2, "predicted_iou": 0.9,
             "stability_score": 0.95, "point_coords": [[0.5, 0.5]]},
            {"mask_url": "https://masks/1.png", "bbox": [0, 0, 1, 1], "area": 1, "predicted_iou": 0.8,
             "stability_score": 0.9, "point_coords": [[1.5, 0.5]], "rle": {"size": [1, 2], "counts": "01"}},
        ],
        "label_map_url": "https://masks/l.png", "width": 2, "height": 1,
    }
    unstored = EverythingResponse.of(EverythingResult([], Upload(None, "upload deadline passed"), 2, 1, False, 0))
    assert json.loads(unstored.model_dump_json()) == {
        "objects": [], "label_map_url": None, "label_map_error": "upload deadline passed", "width": 2, "height": 1}
