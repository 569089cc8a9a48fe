"""Clips: accepted containers and codecs, frames upright as players show them, limits, the preview."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from sam2_api import errors, video
from tests.clips import encode, moving_shapes

LIMITS = video.VideoLimits(max_frames=20, max_pixels=320 * 240, max_seconds=10)


@pytest.mark.parametrize("kind, container, codec", [("mp4", "MP4/MOV", "h264"), ("mov", "MP4/MOV", "h264"),
                                                    ("webm", "WebM/MKV", "vp9")])
def test_each_container_decodes_every_frame_in_order(kind, container, codec):
    source = moving_shapes(6)
    clip = encode(source, kind)
    info, frames = video.decode(clip, LIMITS)
    frames = list(frames)
    assert (info.container, info.codec, info.width, info.height, info.fps) == (container, codec, 128, 96, 10.0)
    assert info.declared_frames == (None if kind == "webm" else 6)
    assert len(frames) == 6 and all(f.shape == (96, 128, 3) and f.dtype == np.uint8 for f in frames)
    # lossy, but each decoded frame is nearest to its own source frame: the order is kept
    for index, frame in enumerate(frames):
        errors_ = [np.abs(frame.astype(int) - s).mean() for s in source]
        assert int(np.argmin(errors_)) == index


# (counter-clockwise rotation, horizontal flip) as a phone or an editor records them, and how a
# player turns the coded frame upright: rotate counter-clockwise by that angle, then mirror.
ORIENTATIONS = [(0, False), (90, False), (180, False), (-90, False), (0, True), (90, True), (180, True), (-90, True)]


@pytest.mark.parametrize("rotation, hflip", ORIENTATIONS)
def test_display_matrix_is_applied_as_players_apply_it(rotation, hflip):
    source = moving_shapes(3)
    coded = list(video.frames(encode(source), LIMITS))
    clip = encode(source, rotation=rotation, hflip=hflip)
    info, frames = video.decode(clip, LIMITS)
    upright = list(frames)
    for raw, shown in zip(coded, upright, strict=True):
        expected = np.rot90(raw, k=(rotation // 90) % 4)
        if hflip:
            expected = expected[:, ::-1]
        assert np.array_equal(shown, expected)
    assert (info.width, info.height) == (upright[0].shape[1], upright[0].shape[0])


def test_the_orientation_of_ffmpegs_autorotation():
    # FFmpeg's own transposes for the matrices with a flip (fftools: cclock_flip / clock_flip)
    transpose = video.Orientation(transpose="cclock_flip")
    clock_flip = video.Orientation(transpose="clock_flip")
    pixels = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    assert np.array_equal(transpose.apply(pixels)[..., 0], pixels[..., 0].T)
    assert np.array_equal(clock_flip.apply(pixels)[..., 0], pixels[::-1, ::-1, 0].T)
    assert video.Orientation.from_matrix(None) == video.Orientation()


@pytest.mark.parametrize("data, kind, words", [
    (b"", errors.InvalidVideo, "empty"),
    (b"plain text, not a video" * 10, errors.UnsupportedVideo, "not a video in a supported format"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, errors.UnsupportedVideo, "not a video"),  # FFmpeg would open it as a video
    (b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", errors.UnsupportedVideo, "not a video"),  # never probed as HLS
    (b"\0\0\0\x18ftypisom" + b"\0" * 100, errors.InvalidVideo, "starts like MP4/MOV but could not be read"),
])
def test_what_is_not_a_readable_video_is_refused(data, kind, words):
    with pytest.raises(kind, match=words):
        video.probe(data, LIMITS)


def test_a_truncated_clip_is_a_400():
    clip = encode(moving_shapes(6))
    with pytest.raises(errors.InvalidVideo):
        list(video.frames(clip[: len(clip) // 2], LIMITS))


def test_a_clip_without_video_is_a_415():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(errors.UnsupportedVideo, match="holds no video stream"):
        video.probe(buffer.getvalue(), LIMITS)


def test_limits_are_413s_with_the_setting_named():
    with pytest.raises(errors.VideoTooLarge, match="SAM2_VIDEO_MAX_FRAMES"):
        video.probe(encode(moving_shapes(21)), LIMITS)  # declared by the container: before decoding
    with pytest.raises(errors.VideoTooLarge, match="more than 20 frames"):
        list(video.frames(encode(moving_shapes(21), "webm"), LIMITS))  # WebM declares none: counted
    with pytest.raises(errors.VideoTooLarge, match="SAM2_VIDEO_MAX_PIXELS"):
        video.probe(encode([np.zeros((256, 336, 3), np.uint8)]), LIMITS)
    with pytest.raises(errors.VideoTooLarge, match="SAM2_VIDEO_MAX_SECONDS"):
        video.probe(encode(moving_shapes(12), fps=1), LIMITS)


def test_preview_is_an_mp4_with_the_masks_drawn(tmp_path):
    frames = moving_shapes(4)
    path = str(tmp_path / "preview.mp4")
    writer = video.PreviewWriter(path, 128, 96, 10.0)
    mask = np.zeros((96, 128), dtype=bool)
    mask[60:90, 10:60] = True
    for frame in frames:
        writer.add(frame, [mask, None])
    writer.close()
    with av.open(path) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert (stream.codec_context.name, float(stream.average_rate)) == ("h264", 10.0)
    assert len(decoded) == 4 and decoded[0].shape == (96, 128, 3)
    inside = decoded[0][70:80, 20:50].reshape(-1, 3).mean(axis=0)
    outside = decoded[0][70:80, 70:100].reshape(-1, 3).mean(axis=0)
    assert inside[2] > outside[2] + 40  # the first object's blue tint


def test_preview_of_a_large_clip_is_scaled_down_to_even_sides(tmp_path):
    writer = video.PreviewWriter(str(tmp_path / "p.mp4"), 3001, 1001, 24.0)
    assert writer.size == (1280, 426)
    writer.add(np.zeros((1001, 3001, 3), np.uint8), [np.ones((1001, 3001), bool)])
    writer.close()
