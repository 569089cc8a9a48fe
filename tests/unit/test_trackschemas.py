"""The track task's fields: one message in words for each malformed one."""

from __future__ import annotations

import pytest

from sam2_api.errors import InvalidField, InvalidPrompt
from sam2_api.messages import TrackSpec
from sam2_api.api.track import TrackRequest
from sam2_api.api.fields.common import parse_formats
from sam2_api.api.fields.track import MAX_TRACK_OBJECTS, TRACK_FORMATS, parse_track_objects


def test_objects_with_one_prompt_or_several():
    count, prompts = parse_track_objects([
        {"frame_index": 3, "points": [[1, 2]]},
        {"prompts": [{"frame_index": 0, "box": [0, 0, 5, 5]}, {"frame_index": 9, "points": [[4, 4]], "labels": [0]}]},
    ])
    assert count == 2
    assert [(p.object_index, p.frame_index) for p in prompts] == [(0, 3), (1, 0), (1, 9)]
    assert prompts[2].prompt.labels == [0] and prompts[1].prompt.box == [0, 0, 5, 5]


@pytest.mark.parametrize("value, words", [
    (None, "`objects` must be a list of 1 to 16 objects"),
    ([], "`objects` must be a list"),
    ([{"frame_index": 0, "points": [[1, 1]]}] * (MAX_TRACK_OBJECTS + 1), "1 to 16"),
    (["x"], "objects[0] must be an object with `frame_index`"),
    ([{"points": [[1, 1]]}], "objects[0].frame_index must be a frame number, 0 or more; got None"),
    ([{"frame_index": -1, "points": [[1, 1]]}], "got -1"),
    ([{"frame_index": True, "points": [[1, 1]]}], "got True"),
    ([{"frame_index": 0}], "objects[0]: invalid prompt: give at least one of `points` or `box`"),
    ([{"frame_index": 0, "points": [[1, 1]], "multimask_output": True}], "`multimask_output` does not apply"),
    ([{"prompts": []}], "objects[0].prompts must be a list of 1 to 16 prompts"),
    ([{"prompts": [{"frame_index": 0, "points": [[1, 1]]}], "frame_index": 0}], "either `prompts` or one prompt"),
    ([{"prompts": [{"frame_index": 2, "points": [[1, 1]]}, {"frame_index": 2, "box": [0, 0, 1, 1]}]}],
     "objects[0] has two prompts on one frame"),
    ([{"prompts": [{"frame_index": 0, "points": "x"}]}], "objects[0].prompts[0]: invalid prompt: `points` must be"),
])
def test_malformed_objects_are_named(value, words):
    with pytest.raises(InvalidPrompt) as raised:
        parse_track_objects(value)
    assert words in str(raised.value)


@pytest.mark.parametrize("fields, words", [
    ({"start_frame_index": -1}, "`start_frame_index` must be a whole number of at least 0"),
    ({"start_frame_index": 1.5}, "`start_frame_index` must be a whole number"),
    ({"max_frames": 0}, "`max_frames` must be a whole number of at least 1"),
    ({"reverse": "yes"}, "`reverse` must be true or false"),
    ({"formats": ["polygons"]}, '`formats` must be a list of "rle", e.g. ["rle"]'),
    ({"video_url": 5}, "`video_url` must be a string"),
])
def test_malformed_fields_are_named(fields, words):
    values = {"video_url": None, "start_frame_index": None, "max_frames": None, "reverse": None, "formats": None,
              **fields}
    with pytest.raises(InvalidField, match=words.replace("(", r"\(").replace("[", r"\[")):
        TrackRequest.parse(b"clip", objects=[{"frame_index": 0, "points": [[1, 1]]}], **values)


def test_a_request_parses():
    request = TrackRequest.parse(None, "s3://b/k.mp4", [{"frame_index": 1, "box": [0, 0, 4, 4]}], 1, 5, True,
                                 ["rle", "rle"])
    assert (request.url, request.objects, request.start_frame_index, request.max_frames, request.reverse,
            request.formats) == ("s3://b/k.mp4", 1, 1, 5, True, ("rle",))
    assert parse_formats(None, TRACK_FORMATS) == ()


def test_prompts_are_checked_against_the_frame_by_the_spec_both_services_share():
    count, prompts = parse_track_objects([{"frame_index": 0, "points": [[10, 10]]},
                                          {"prompts": [{"frame_index": 0, "box": [0, 0, 128, 96]},
                                                       {"frame_index": 4, "points": [[129, 5]]}]}])
    spec = TrackSpec(job_id="j", objects=count, prompts=prompts)
    spec.check_fits(129, 96)  # on the frame's edges is on the frame
    with pytest.raises(InvalidPrompt) as refused:
        spec.check_fits(100, 96)
    assert str(refused.value) == "objects[1] on frame 0: box [0.0, 0.0, 128.0, 96.0] is outside the 100x96 image"
    with pytest.raises(InvalidPrompt, match=r"^objects\[1\] on frame 4: point 0 \(129.0, 5.0\) is outside the 128x96"):
        spec.check_fits(128, 96)
