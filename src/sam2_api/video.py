"""Video clips: the container checked, frames decoded upright within limits, and the preview.

Frames: every frame is an ``(H, W, 3)`` uint8 RGB array, upright: the container's display matrix
(the rotation, and any flip, that phones record instead of turning the pixels) is applied as
FFmpeg's own players apply it, as EXIF orientation is applied to images. Points and boxes are
given, and masks returned, in that upright frame. Frame indices count the decoded frames from 0,
in presentation order.

Only MP4/MOV and WebM/Matroska files are opened, each with its own demuxer named explicitly: FFmpeg
never probes an upload as a playlist or any other format that could make it open further files or
URLs. PyAV's wheels carry FFmpeg, so nothing needs installing on the host.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Iterator

import av
import cv2
import numpy as np

from .errors import InvalidVideo, UnsupportedVideo, VideoTooLarge

# Demuxer (as FFmpeg names it) → what users call the format. Both are picked from the file's first
# bytes, never by FFmpeg's probing.
CONTAINERS = {"mov": "MP4/MOV", "matroska": "WebM/MKV"}
CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")  # what an MP4/MOV opens with
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # WebM and Matroska

PREVIEW_MAX_SIDE = 1280  # the preview is for people: long clips at 4K would only cost time and bytes
PREVIEW_CRF = 23
# Distinct colours (RGB) for objects 0, 1, 2, ... in the preview; the first is the /ui page's blue.
PALETTE = np.array([(30, 144, 255), (255, 99, 71), (50, 205, 50), (255, 215, 0), (186, 85, 211),
                    (0, 206, 209), (255, 140, 0), (255, 20, 147)], dtype=np.float32)
PREVIEW_ALPHA = 0.5


@dataclass(frozen=True)
class VideoLimits:
    """What a clip may hold: decoded frames, pixels per frame, seconds (413 beyond each)."""

    max_frames: int
    max_pixels: int
    max_seconds: float


@dataclass(frozen=True)
class ClipInfo:
    """A clip's header, as far as it can be read without decoding it all.

    ``width``/``height`` are the upright frame's; ``fps`` the average rate the container declares
    (25 when it declares none); ``declared_frames`` the frame count it declares, None when unknown
    (WebM declares none): only decoding counts frames for sure.
    """

    container: str
    codec: str
    width: int
    height: int
    fps: float
    declared_frames: int | None
    seconds: float | None


def demuxer_of(data: bytes) -> str:
    """The demuxer for ``data``, from its first bytes; :class:`UnsupportedVideo` for anything else."""
    if not data:
        raise InvalidVideo("the video file is empty")
    if data[4:8] in _MP4_BOXES:
        return "mov"
    if data.startswith(_EBML_MAGIC):
        return "matroska"
    raise UnsupportedVideo(f"the file is not a video in a supported format ({', '.join(CONTAINERS.values())})")


def probe(data: bytes, limits: VideoLimits) -> ClipInfo:
    """Check the container, codec, frame size, duration and declared frame count against
    ``limits`` by reading the header and decoding the first frame only."""
    info, frames = decode(data, limits)
    frames.close()
    return info


def decode(data: bytes, limits: VideoLimits) -> tuple[ClipInfo, Iterator[np.ndarray]]:
    """The clip's header and a generator of its frames, upright, in order (close it to stop
    early). The limits are checked before decoding and as decoding goes: 413 at the first frame
    past ``max_frames`` or ``max_seconds``."""
    frames = _upright_frames(data, limits)
    info = next(frames)
    return info, frames


def frames(data: bytes, limits: VideoLimits) -> Iterator[np.ndarray]:
    """Every frame of the clip, upright, in order (:func:`decode` without the header)."""
    return decode(data, limits)[1]


def _upright_frames(data: bytes, limits: VideoLimits) -> Iterator:
    """The clip's :class:`ClipInfo`, then its frames."""
    with _opened(data) as (container, stream):
        orient = None
        for frame in _decoded(container, stream, limits):
            if orient is None:
                orient = Orientation.of(frame)
                yield _info(container, stream, orient)
            yield orient.apply(frame.to_ndarray(format="rgb24"))
        if orient is None:
            raise InvalidVideo("the video has no frames")


class _opened:
    """``with _opened(data) as (container, stream)``: the first video stream, checked."""

    def __init__(self, data: bytes) -> None:
        self.demuxer = demuxer_of(data)
        self.data = data

    def __enter__(self):
        label = CONTAINERS[self.demuxer]
        try:
            self.container = av.open(io.BytesIO(self.data), format=self.demuxer)
        except av.FFmpegError as exc:
            raise InvalidVideo(f"the file starts like {label} but could not be read (truncated or corrupt?): "
                               f"{_reason(exc)}") from None
        try:
            if not self.container.streams.video:
                raise UnsupportedVideo(f"the {label} file holds no video stream")
            stream = self.container.streams.video[0]
            codec = stream.codec_context.name
            if codec not in CODECS:
                raise UnsupportedVideo(f"the video is coded as {codec}; supported codecs: {', '.join(CODECS)}")
            stream.thread_type = "AUTO"  # frame and slice threads: FFmpeg decodes on every core
        except BaseException:
            self.container.close()
            raise
        return self.container, stream

    def __exit__(self, *exc_info) -> None:
        self.container.close()


def _decoded(container, stream, limits: VideoLimits) -> Iterator[av.VideoFrame]:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise VideoTooLarge(f"the video's frames are {width}x{height} = {width * height} pixels; the limit is "
                            f"{limits.max_pixels} (SAM2_VIDEO_MAX_PIXELS)")
    seconds = _declared_seconds(container, stream)
    if seconds is not None and seconds > limits.max_seconds:
        raise VideoTooLarge(f"the video lasts {seconds:.1f} s; the limit is {limits.max_seconds:g} s "
                            "(SAM2_VIDEO_MAX_SECONDS)")
    if stream.frames and stream.frames > limits.max_frames:
        raise VideoTooLarge(_too_many_frames(f"{stream.frames}", limits))
    count = 0
    try:
        for frame in container.decode(stream):
            count += 1
            if count > limits.max_frames:
                raise VideoTooLarge(_too_many_frames(f"more than {limits.max_frames}", limits))
            if frame.time is not None and frame.time > limits.max_seconds:
                raise VideoTooLarge(f"the video lasts more than {limits.max_seconds:g} s (SAM2_VIDEO_MAX_SECONDS)")
            if (frame.width, frame.height) != (width, height):
                raise InvalidVideo(f"frame {count - 1} is {frame.width}x{frame.height}, not {width}x{height}: "
                                   "clips whose frame size changes are not supported")
            yield frame
    except av.FFmpegError as exc:
        raise InvalidVideo(f"the video could not be decoded after {count} frames (truncated or corrupt?): "
                           f"{_reason(exc)}") from None


def _too_many_frames(count: str, limits: VideoLimits) -> str:
    return f"the video has {count} frames; the limit is {limits.max_frames} (SAM2_VIDEO_MAX_FRAMES)"


def _declared_seconds(container, stream) -> float | None:
    if container.duration:
        return container.duration / av.time_base
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _info(container, stream, orient: Orientation) -> ClipInfo:
    width, height = orient.size(stream.codec_context.width, stream.codec_context.height)
    rate = stream.average_rate
    return ClipInfo(
        container=CONTAINERS[_demuxer_name(container)], codec=stream.codec_context.name,
        width=width, height=height, fps=round(float(rate), 3) if rate else 25.0,
        declared_frames=stream.frames or None, seconds=_declared_seconds(container, stream),
    )


def _demuxer_name(container) -> str:
    return "mov" if container.format.name.startswith("mov") else "matroska"


def _reason(exc: av.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


@dataclass(frozen=True)
class Orientation:
    """How to turn a decoded frame upright: FFmpeg's autorotation (``fftools``), from the display
    matrix: a transpose for 90°/270° (with or without a flip), flips for 180°, a vertical flip at
    0° when the matrix says so. Other angles are not multiples of 90° and are left as coded."""

    transpose: str | None = None  # "clock", "cclock", "clock_flip", "cclock_flip", as FFmpeg's filter
    hflip: bool = False
    vflip: bool = False

    @classmethod
    def of(cls, frame: av.VideoFrame) -> "Orientation":
        matrix = next((np.frombuffer(bytes(side), dtype="<i4") for side in frame.side_data
                       if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX), None)
        return cls.from_matrix(matrix)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray | None) -> "Orientation":
        if matrix is None:
            return cls()
        theta = _clockwise_degrees(matrix)
        if abs(theta - 90) < 1:
            return cls(transpose="cclock_flip" if matrix[3] > 0 else "clock")
        if abs(theta - 180) < 1:
            return cls(hflip=bool(matrix[0] < 0), vflip=bool(matrix[4] < 0))
        if abs(theta - 270) < 1:
            return cls(transpose="clock_flip" if matrix[3] < 0 else "cclock")
        if abs(theta) < 1:
            return cls(vflip=bool(matrix[4] < 0))
        return cls()

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The upright ``(width, height)`` of a coded ``width × height`` frame."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The upright copy of a coded ``(H, W, C)`` frame."""
        if self.transpose == "clock":
            pixels = np.rot90(pixels, k=-1)
        elif self.transpose == "cclock":
            pixels = np.rot90(pixels, k=1)
        elif self.transpose == "cclock_flip":
            pixels = pixels.transpose(1, 0, 2)
        elif self.transpose == "clock_flip":
            pixels = pixels[::-1, ::-1].transpose(1, 0, 2)
        if self.hflip:
            pixels = pixels[:, ::-1]
        if self.vflip:
            pixels = pixels[::-1]
        return np.ascontiguousarray(pixels)


def _clockwise_degrees(matrix: np.ndarray) -> float:
    """FFmpeg's ``get_rotation``: the display matrix's rotation, clockwise, in [0, 360)."""
    scale = [math.hypot(matrix[0], matrix[3]), math.hypot(matrix[1], matrix[4])]
    if scale[0] == 0 or scale[1] == 0:
        return 0.0
    # av_display_rotation_get() is the negated angle below; get_rotation() negates it back
    theta = round(math.degrees(math.atan2(matrix[1] / scale[1], matrix[0] / scale[0])))
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


class PreviewWriter:
    """An H.264 MP4 of the clip with each object's mask tinted in its own colour and outlined, for
    people to look at; at most :data:`PREVIEW_MAX_SIDE` pixels on the longer side."""

    def __init__(self, path: str, width: int, height: int, fps: float) -> None:
        scale = min(1.0, PREVIEW_MAX_SIDE / max(width, height))
        # yuv420p needs even sides
        self.size = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
        self._container = av.open(path, "w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=_rate(fps),
                                                  options={"crf": str(PREVIEW_CRF), "preset": "veryfast"})
        self._stream.width, self._stream.height = self.size
        self._stream.pix_fmt = "yuv420p"
        self._line = max(1, round(max(self.size) / 400))

    def add(self, frame: np.ndarray, masks: list[np.ndarray | None]) -> None:
        """One upright frame and its objects' ``(H, W)`` bool masks (None: not tracked on it)."""
        pixels = frame.astype(np.float32)
        for index, mask in enumerate(masks):
            if mask is not None and mask.any():
                colour = PALETTE[index % len(PALETTE)]
                pixels[mask] = (1 - PREVIEW_ALPHA) * pixels[mask] + PREVIEW_ALPHA * colour
        drawn = np.round(pixels).astype(np.uint8)
        if (drawn.shape[1], drawn.shape[0]) != self.size:
            drawn = cv2.resize(drawn, self.size, interpolation=cv2.INTER_AREA)
        for index, mask in enumerate(masks):
            if mask is not None and mask.any():
                small = cv2.resize(mask.astype(np.uint8), self.size, interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(small, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
                colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
                cv2.drawContours(drawn, contours, -1, colour, self._line)
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
