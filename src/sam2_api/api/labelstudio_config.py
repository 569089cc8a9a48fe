"""A Label Studio labelling config, read for what the SAM 2 backend needs from it.

Label Studio sends the project's config (XML) with every call: ``schema`` in /setup,
``label_config`` in /predict. From it come the ``Image`` tags (each ``name`` and the task field its
``value="$field"`` names), and the control tags that point at an image (``toName``): where the
clicks come from (``KeyPointLabels``, ``RectangleLabels`` and their unlabelled forms) and where
the mask goes (``BrushLabels`` / ``Brush``: brush RLE; ``BitmaskLabels`` / ``Bitmask``: a PNG data
URL), with their ``Label`` values. Tag names are matched without regard to case, as Label Studio does.

The XML is the project owner's text: it is read within :data:`MAX_CONFIG_BYTES`, and a document
type declaration (which a config never needs, and through which entities could expand) is refused.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidField
from .fields.common import shown

MAX_CONFIG_BYTES = 512 * 1024
# Configs kept parsed (every click of a project sends the same one); a real one is a few KiB. A
# larger one is parsed at each call: 64 kept configs near MAX_CONFIG_BYTES held 164 MB per worker.
CACHED_CONFIG_BYTES = 64 * 1024
PROMPT_TAGS = ("keypointlabels", "keypoint", "rectanglelabels", "rectangle")
BRUSH_TAGS = ("brushlabels", "brush")
BITMASK_TAGS = ("bitmasklabels", "bitmask")
OUTPUT_TAGS = BRUSH_TAGS + BITMASK_TAGS
EXAMPLE = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
           '<Label value="object"/></BrushLabels><KeyPointLabels name="click" toName="image" smart="true">'
           '<Label value="object"/></KeyPointLabels></View>')


@dataclass(frozen=True)
class Control:
    """A control tag: its lower-cased tag name (also its results' ``type``), ``name``, the object
    tags it points at, and its ``Label`` values in order."""

    tag: str
    name: str
    to_names: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    images: dict[str, str]  # Image tag name -> the task's data field holding its URL
    controls: tuple[Control, ...]

    def outputs_for(self, image: str) -> list[Control]:
        """The mask tags that point at ``image``, in the config's order."""
        return [c for c in self.controls if c.tag in OUTPUT_TAGS and image in c.to_names]

    def check_usable(self, field: str) -> None:
        """400 unless some image has a mask tag and a click or box tag pointing at it."""
        # One pass over the controls, not one per image: a config of thousands of each would
        # otherwise cost seconds of CPU per call.
        masked = {n for c in self.controls if c.tag in OUTPUT_TAGS for n in c.to_names}
        prompted = {n for c in self.controls if c.tag in PROMPT_TAGS for n in c.to_names}
        if masked & prompted & self.images.keys():
            return
        raise InvalidField(
            f"`{field}` needs an <Image>, a <BrushLabels> (or <BitmaskLabels>) and a <KeyPointLabels> (or "
            f"<RectangleLabels>) with smart=\"true\", both with toName naming that image; e.g. {EXAMPLE} "
            "(docs/LABEL_STUDIO.md)"
        )


def parse_label_config(text: Any, field: str) -> LabelConfig:
    """``text`` (the request's ``field``) as a :class:`LabelConfig`; 400 saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidField(f"`{field}` must be the project's labelling config (XML); got {shown(text)}")
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InvalidField(f"`{field}` is over {MAX_CONFIG_BYTES} bytes")
    return (_parsed if len(text) <= CACHED_CONFIG_BYTES else _parsed.__wrapped__)(text, field)


@functools.lru_cache(maxsize=64)  # every click of a project sends the same config
def _parsed(text: str, field: str) -> LabelConfig:
    if "<!DOCTYPE" in text.upper():
        raise InvalidField(f"`{field}` may not hold a <!DOCTYPE> declaration")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise InvalidField(f"`{field}` is not well-formed XML: {exc}") from None
    images: dict[str, str] = {}
    controls = []
    for element in root.iter():
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        name = element.get("name") or ""
        if tag == "image" and name:
            value = element.get("value") or ""
            if value.startswith("$") and len(value) > 1:
                images[name] = value[1:]
        elif tag in PROMPT_TAGS + OUTPUT_TAGS and name:
            to_names = tuple(n.strip() for n in (element.get("toName") or element.get("toname") or "").split(","))
            labels = tuple(child.get("value") or "" for child in element if str(child.tag).lower() == "label")
            controls.append(Control(tag, name, tuple(n for n in to_names if n), labels))
    return LabelConfig(images, tuple(controls))
