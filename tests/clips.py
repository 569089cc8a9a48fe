"""Short synthetic clips made with PyAV for the video tests: moving shapes on a plain background."""

from __future__ import annotations

import io

import av
import numpy as np

# (codec, muxer, pixel format) per container the service accepts
FORMATS = {
    "mp4": ("libx264", "mp4", "yuv420p"),
    "mov": ("libx264", "mov", "yuv420p"),
    "webm": ("libvpx-vp9", "webm", "yuv420p"),
}


def moving_shapes(count: int, width: int = 128, height: int = 96) -> list[np.ndarray]:
    """``count`` RGB frames: a red square moving right and a green disc moving down, over a grey
    gradient, so that every frame differs and each object has an obvious place to click."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[...] = (60 + 80 * xs / width)[..., None].astype(np.uint8)
        x0 = 8 + 4 * t
        frame[20:44, x0:x0 + 24] = (220, 40, 40)
        cy, cx = 30 + 3 * t, 90
        frame[(ys - cy) ** 2 + (xs - cx) ** 2 <= 12 ** 2] = (40, 200, 60)
        frames.append(frame)
    return frames


def encode(frames: list[np.ndarray], kind: str = "mp4", fps: int = 10, rotation: int | None = None,
           hflip: bool = False) -> bytes:
    """The frames as a clip of ``kind``; ``rotation`` (counter-clockwise degrees) and ``hflip`` set
    the display matrix, as a phone records a portrait video."""
    codec, muxer, pix_fmt = FORMATS[kind]
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as container:
        stream = container.add_stream(codec, rate=fps, options={"crf": "18"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
