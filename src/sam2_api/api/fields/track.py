"""The HTTP contract of the ``track`` task: its fields, their checks, its result.

As in ``fields/segment.py``, fields are documented with the JSON schema of what they must hold but
accepted as sent and checked here, so that a malformed field gets one message in words.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ...errors import InvalidField, InvalidPrompt
from ...prompts import Prompt
from ...messages import TrackPrompt
from .common import shown
from .segment import MASK_ERROR, UploadError, _documented

MAX_TRACK_OBJECTS = 16  # each object costs a memory-attention and decoder pass per frame
MAX_PROMPTS_PER_OBJECT = 16
TRACK_FORMATS = ("rle",)  # a clip's masks: no polygons

_FRAME_PROMPT = {
    "type": "object",
    "properties": {
        "frame_index": {"type": "integer", "minimum": 0, "description": "The frame the prompt is on (0 = first)."},
        **{name: field for name, field in Prompt.model_json_schema()["properties"].items() if name != "multimask_output"},
    },
    "required": ["frame_index"],
}

VideoField = Field(
    description="The clip: MP4 or MOV (H.264, HEVC, MPEG-4, AV1) or WebM/MKV (VP8, VP9, AV1). Its rotation "
    "metadata is applied first, so coordinates refer to the upright frames. Leave it out when you send "
    "`video_url`.",
    default_factory=lambda: None,  # optional, as `image` is (see schemas.ImageField)
)
VideoUrlField = _documented(
    str,
    "The clip by reference instead of upload: s3://bucket/key (from the buckets in S3_INPUT_BUCKETS only) or "
    "https://… (public addresses only), at most SAM2_VIDEO_MAX_UPLOAD_BYTES. Send either this or `video`.",
    examples=["s3://my-videos/clips/dog.mp4"],
)
TrackObjectsField = _documented(
    {"type": "array", "minItems": 1, "maxItems": MAX_TRACK_OBJECTS, "items": {"oneOf": [
        _FRAME_PROMPT,
        {"type": "object", "required": ["prompts"], "properties": {"prompts": {
            "type": "array", "minItems": 1, "maxItems": MAX_PROMPTS_PER_OBJECT, "items": _FRAME_PROMPT}}},
    ]}},
    f"One entry per object to track (1 to {MAX_TRACK_OBJECTS}): a prompt on one frame, `frame_index` with the "
    "fields of /segment (`points`, `labels`, `box`, in pixels of the upright frame), or `prompts`, a list of "
    "such prompts on different frames of the same object.",
    examples=[[{"frame_index": 0, "points": [[120, 80]]},
               {"prompts": [{"frame_index": 0, "box": [10, 10, 90, 90]}, {"frame_index": 30, "points": [[50, 40]]}]}]],
)
StartFrameField = _documented(
    int, "The first frame to track. Default: the first frame with a prompt (the last one when `reverse`).",
)
MaxFramesField = _documented(
    int, "Track at most this many frames, the first one included. Default: to the end of the clip (its start "
    "when `reverse`).",
)
ReverseField = _documented(bool, "Track backwards, from `start_frame_index` towards the first frame. Default: false.")
FormatsField = _documented(
    list[Literal["rle"]], "Also put each mask into the manifest as COCO RLE (`[\"rle\"]`). Default: PNG URLs only.",
)


def parse_track_objects(value: Any) -> tuple[int, list[TrackPrompt]]:
    """``objects`` → how many objects, and their prompts in order (object by object)."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TRACK_OBJECTS:
        raise InvalidPrompt(
            f"`objects` must be a list of 1 to {MAX_TRACK_OBJECTS} objects, each a prompt with its `frame_index`, "
            f'e.g. [{{"frame_index": 0, "points": [[120, 80]]}}]; got {shown(value)}'
        )
    prompts = []
    for index, entry in enumerate(value):
        where = f"objects[{index}]"
        if isinstance(entry, dict) and "prompts" in entry:
            if set(entry) != {"prompts"}:
                raise InvalidPrompt(f"{where}: give either `prompts` or one prompt's fields, not both")
            entries = entry["prompts"]
            if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_PROMPTS_PER_OBJECT:
                raise InvalidPrompt(f"{where}.prompts must be a list of 1 to {MAX_PROMPTS_PER_OBJECT} prompts, "
                                    f"each with its `frame_index`; got {shown(entries)}")
            parsed = [_frame_prompt(index, fields, f"{where}.prompts[{n}]") for n, fields in enumerate(entries)]
        else:
            parsed = [_frame_prompt(index, entry, where)]
        frames = [prompt.frame_index for prompt in parsed]
        if len(set(frames)) != len(frames):
            raise InvalidPrompt(f"{where} has two prompts on one frame: put all of a frame's clicks into one prompt")
        prompts += parsed
    return len(value), prompts


def _frame_prompt(object_index: int, fields: Any, where: str) -> TrackPrompt:
    if not isinstance(fields, dict):
        raise InvalidPrompt(f"{where} must be an object with `frame_index` and the fields of /segment; got "
                            f"{shown(fields)}")
    fields = dict(fields)
    frame_index = fields.pop("frame_index", None)
    if not _is_int(frame_index) or frame_index < 0:
        raise InvalidPrompt(f"{where}.frame_index must be a frame number, 0 or more; got {shown(frame_index)}")
    if "multimask_output" in fields:
        raise InvalidPrompt(f"{where}: `multimask_output` does not apply to tracking (SAM 2 chooses per frame)")
    try:
        prompt = Prompt.parse(**fields)
    except InvalidPrompt as exc:
        raise InvalidPrompt(f"{where}: {exc}") from None
    return TrackPrompt(object_index=object_index, frame_index=frame_index, prompt=prompt)


def parse_video_url(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidField(f"`video_url` must be a string: s3://bucket/key or https://host/path; got {shown(value)}")


def parse_frame_count(value: Any, name: str, least: int) -> int | None:
    """An optional integer field of at least ``least``."""
    if value is None:
        return None
    if not _is_int(value) or value < least:
        raise InvalidField(f"`{name}` must be a whole number of at least {least}; got {shown(value)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


PREVIEW_NOT_MADE = "preview not made"
PreviewError = Literal[UploadError, PREVIEW_NOT_MADE]


class TrackResponse(BaseModel):
    """Where the tracked masks went, and the clip they belong to."""

    manifest_url: str | None = Field(
        description="URL of the manifest (JSON): per tracked frame and object, the mask's PNG URL, box and area, "
        "and its RLE when asked for; null if it could not be stored."
    )
    preview_url: str | None = Field(description="URL of an MP4 of the tracked frames with the masks drawn in colour; "
                                    "null when it was not made or not stored, and then `preview_error` says why.")
    preview_error: PreviewError | None = Field(
        None, exclude_if=lambda value: value is None,
        description=MASK_ERROR.replace("`mask_url`", "`preview_url`").replace("the mask was", "the preview was")
        + f' "{PREVIEW_NOT_MADE}": the MP4 could not be made (the server log says why).')
    frames: int = Field(description="Frames tracked.")
    objects: int = Field(description="Objects tracked.")
    width: int = Field(description="Width of the upright frames and of every mask, in pixels.")
    height: int = Field(description="Height of the upright frames and of every mask, in pixels.")
    fps: float = Field(description="The clip's frame rate, as its container declares it (25 when it declares none).")
    clip_frames: int = Field(description="Frames in the clip.")
    first_frame: int = Field(description="The first frame tracked.")
    last_frame: int = Field(description="The last frame tracked (before `first_frame` when tracking in reverse).")
