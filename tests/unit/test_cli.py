"""The command line's own logic, without a server: the overlay's pixels and the options."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from PIL import Image

from sam2_api.cli.batch import resume_command
from sam2_api.cli.client import DEFAULT_URL, Client
from sam2_api.cli.commands import parse_args
from sam2_api.cli.overlay import draw_overlay, mask_edge

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


@pytest.mark.parametrize("argv", [
    ["--url", "http://a:1", "--api-key", "k", "--timeout", "5", "segment", "x.png", "--point", "1,2"],
    ["segment", "x.png", "--point", "1,2", "--url", "http://a:1", "--api-key", "k", "--timeout", "5"],
    ["--timeout", "5", "segment", "--url", "http://a:1", "x.png", "--api-key", "k", "--point", "1,2"],
])
def test_server_options_go_before_or_after_the_command(argv):
    args = parse_args(argv, environ={})
    assert (args.url, args.api_key, args.timeout, args.image, args.point) == ("http://a:1", "k", 5.0, "x.png",
                                                                             [([1.0, 2.0], 1)])


def test_server_options_come_from_the_environment_unless_a_flag_says_otherwise():
    environ = {"SAM2_API_URL": "http://env:2", "SAM2_API_KEY": "env-key"}
    args = parse_args(["batch", "in.jsonl", "--output", "out.jsonl"], environ=environ)
    assert (args.url, args.api_key, args.timeout) == ("http://env:2", "env-key", 300.0)
    args = parse_args(["batch", "in.jsonl", "--output", "out.jsonl", "--url", "http://flag:3", "--api-key", "f"],
                      environ=environ)
    assert (args.url, args.api_key) == ("http://flag:3", "f")
    args = parse_args(["--url", "http://before:4", "segment", "x.png", "--box", "1,2,3,4", "--url", "http://after:5"],
                      environ=environ)
    assert args.url == "http://after:5"  # given twice: the later wins
    args = parse_args(["segment", "x.png", "--box", "1,2,3,4"], environ={})
    assert (args.url, args.api_key) == (DEFAULT_URL, None)
    assert "Authorization" not in Client(args.url, args.api_key, 1).http.headers
    assert Client("http://x", "env-key", 1).http.headers["Authorization"] == "Bearer env-key"


def test_the_resume_command_repeats_what_changes_the_run():
    args = parse_args(["batch", "my requests.jsonl", "--output", "out.jsonl", "--concurrency", "2", "--quiet"],
                      environ={"SAM2_API_URL": "http://gpu:3000"})
    assert resume_command(args) == ("sam2-api batch 'my requests.jsonl' --output out.jsonl --resume"
                                    " --url http://gpu:3000 --concurrency 2 --quiet")
    again = parse_args(shlex.split(resume_command(args))[1:], environ={})  # the same run, with --resume
    assert (str(again.requests), again.resume, again.url, again.concurrency, again.quiet) == (
        "my requests.jsonl", True, "http://gpu:3000", 2, True)


@pytest.mark.parametrize("argv, message", [
    (["segment", "x.png"], "give at least one --point or a --box"),
    (["batch", "in.jsonl", "--output", "o", "--concurrency", "0"], "--concurrency must be at least 1"),
    (["segment", "x.png", "--point", "1"], "--point wants X,Y or X,Y,LABEL"),
])
def test_bad_command_lines_exit_2_saying_why(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv, environ={})
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_refinement_options_become_the_request_fields():
    args = parse_args(["segment", "x.png", "--point", "1,2", "--candidates", "--format", "rle", "--format", "polygons",
                       "--format", "rle", "--polygon-tolerance", "1.5", "--previous-mask-id", "m_id",
                       "--mask-input", "start.png"], environ={})
    assert (args.candidates, args.format, args.polygon_tolerance, args.previous_mask_id, str(args.mask_input)) == (
        True, ["rle", "polygons", "rle"], 1.5, "m_id", "start.png")
    plain = parse_args(["segment", "x.png", "--point", "1,2"], environ={})
    assert (plain.candidates, plain.format, plain.polygon_tolerance, plain.previous_mask_id, plain.mask_input) == (
        False, [], None, None, None)


def test_an_unknown_format_exits_2_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["segment", "x.png", "--point", "1,2", "--format", "geojson"], environ={})
    assert exit_.value.code == 2 and "choose from 'rle', 'polygons'" in capsys.readouterr().err


def test_track_objects_from_the_command_line():
    from sam2_api.cli.commands import parse_tracked_object

    assert parse_tracked_object("0:120,80") == {"frame_index": 0, "points": [[120.0, 80.0]], "labels": [1]}
    assert parse_tracked_object("3:box=10,10,90,90") == {"frame_index": 3, "box": [10.0, 10.0, 90.0, 90.0]}
    assert parse_tracked_object("0:box=10,10,90,90:50,50,0+30:100,70") == {"prompts": [
        {"frame_index": 0, "box": [10.0, 10.0, 90.0, 90.0], "points": [[50.0, 50.0]], "labels": [0]},
        {"frame_index": 30, "points": [[100.0, 70.0]], "labels": [1]}]}
    args = parse_args(["track", "clip.mp4", "--object", "0:1,2", "--object", "0:box=1,1,5,5", "--reverse"])
    assert (len(args.object), args.reverse, args.start, args.max_frames) == (2, True, None, None)


@pytest.mark.parametrize("argv", [["track", "clip.mp4"], ["track", "clip.mp4", "--object", "120,80"],
                                  ["track", "clip.mp4", "--object", "x:1,2"]])
def test_track_refuses_a_malformed_object(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "--object" in capsys.readouterr().err


def test_everything_overlay_tints_each_object_in_its_own_colour_and_outlines_it():
    from sam2_api.cli.overlay import draw_objects, object_colour

    image = Image.new("RGB", (60, 40), (GREY, GREY, GREY))
    labels = np.zeros((40, 60), dtype=np.uint16)
    labels[5:25, 5:30] = 1
    labels[10:35, 30:55] = 7
    drawn = np.asarray(draw_objects(image, labels)).astype(int)
    for label, (y, x) in ((1, (15, 15)), (7, (20, 45))):
        colour = np.array(object_colour(label))
        assert drawn[y, x].tolist() == ((GREY + colour + 1) // 2).tolist()  # half-way to its colour, halves up
    assert drawn[15, 30].tolist() == list(object_colour(7))  # where 7 meets 1: 7's outline
    assert drawn[15, 29].tolist() == list(object_colour(1))  # and 1's
    assert drawn[5, 15].tolist() == drawn[24, 15].tolist() == list(object_colour(1))  # where 1 meets the background
    assert (drawn[labels == 0] == GREY).all()  # the background is untouched
    colours = {object_colour(label) for label in range(1, 257)}
    assert len(colours) == 256 and object_colour(1) != object_colour(2)
    with pytest.raises(ValueError, match="the label map is 10x10, the image 60x40"):
        draw_objects(image, np.zeros((10, 10), dtype=np.uint16))


def test_everything_options_go_to_the_fields_of_the_route():
    args = parse_args(["everything", "photo.jpg", "--points-per-side", "16", "--param", "crop_n_layers=1",
                       "--param", 'formats=["rle"]', "--param", "image_id=cat", "--overlay", "out.png"], {})
    assert (args.command, args.image, args.points_per_side, args.max_objects) == ("everything", "photo.jpg", 16, None)
    assert args.param == [("crop_n_layers", 1), ("formats", ["rle"]), ("image_id", "cat")]
    with pytest.raises(SystemExit):
        parse_args(["everything", "photo.jpg", "--param", "no-equals-sign"], {})
