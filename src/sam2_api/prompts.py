"""What the caller asks SAM 2 to segment: points with labels, a box, or both; optionally the mask
of an earlier answer to refine (``previous_mask_id``), and whether to return every candidate.

Frame and unit: pixels of the upright image (EXIF orientation applied), x to the right and y
down, origin at the image's top-left corner; the image covers ``0 ≤ x ≤ W`` and ``0 ≤ y ≤ H``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidPrompt

MAX_POINTS = 64
MASK_ID_PATTERN = r"m_[A-Za-z0-9_-]{22}"  # a mask_id (sam2_api.model.logit_cache): "m_" + 16 random bytes, URL-safe base64

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Lists of fixed length rather than tuples: JSON schema then has "items", which clients rely on.
Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
Box = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4)]
Label = Literal[0, 1]


class Prompt(BaseModel):
    """One object's prompt: clicks with their labels, a box, or both, in pixels of the upright image."""

    # Validation checks the shape; check_fits checks the coordinates against an image's size.
    model_config = ConfigDict(frozen=True)

    points: list[Point] | None = Field(None, max_length=MAX_POINTS)
    labels: list[Label] | None = None
    box: Box | None = None
    multimask_output: bool | None = None
    previous_mask_id: str | None = Field(None, pattern=f"^{MASK_ID_PATTERN}$")
    candidates: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Prompt":
        if self.labels is not None and not self.points:
            raise ValueError("`labels` were given without `points`")
        if not self.points and self.box is None:
            raise ValueError("give at least one of `points` or `box`")
        if self.labels is not None:
            if len(self.labels) != len(self.points):
                raise ValueError(
                    f"`labels` has {len(self.labels)} entries but `points` has {len(self.points)}"
                )
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if not (x2 > x1 and y2 > y1):
                raise ValueError(f"`box` must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1; got {self.box}")
        if self.candidates and self.multimask_output is False:
            raise ValueError("`candidates` are SAM 2's three masks of multimask output: leave out "
                             "`multimask_output`, or set it true")
        return self

    @classmethod
    def parse(cls, **fields: object) -> "Prompt":
        """Validate raw request fields, turning pydantic's report into one readable message."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidPrompt(_describe(exc)) from None

    def check_fits(self, width: int, height: int) -> None:
        """Raise :class:`InvalidPrompt` unless every coordinate lies on the ``width × height`` image."""
        for index, (x, y) in enumerate(self.points or ()):
            if not (0 <= x <= width and 0 <= y <= height):
                raise InvalidPrompt(
                    f"point {index} ({x}, {y}) is outside the {width}x{height} image"
                )
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if not (0 <= x1 and 0 <= y1 and x2 <= width and y2 <= height):
                raise InvalidPrompt(f"box {self.box} is outside the {width}x{height} image")

    @property
    def wants_multimask(self) -> bool:
        """SAM 2's advice: ask for three masks for one lone click, one mask otherwise; always three
        when the caller wants the candidates."""
        if self.multimask_output is not None:
            return self.multimask_output
        return bool(self.candidates) or (self.box is None and len(self.points or ()) == 1)

    def point_arrays(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """``(N, 2)`` float32 (x, y) pixels and ``(N,)`` int32 labels (1 = object, default)."""
        if not self.points:
            return None, None
        labels = self.labels if self.labels is not None else [1] * len(self.points)
        return np.asarray(self.points, dtype=np.float32), np.asarray(labels, dtype=np.int32)

    def box_array(self) -> np.ndarray | None:
        """``(4,)`` float32 ``[x1, y1, x2, y2]`` pixels, or None."""
        return None if self.box is None else np.asarray(self.box, dtype=np.float32)


# What each field must look like, in words: the lead of every message about a malformed field.
FIELD_HINTS = {
    "points": "`points` must be a list of [x, y] pairs in pixels, e.g. [[320, 200]]",
    "labels": "`labels` must be a list with one 0 (background) or 1 (object) per point, e.g. [1, 0]",
    "box": "`box` must be [x1, y1, x2, y2] in pixels, e.g. [100, 80, 400, 420]",
    "multimask_output": "`multimask_output` must be true or false",
    "previous_mask_id": "`previous_mask_id` must be the `mask_id` of an earlier response, as it was returned",
    "candidates": "`candidates` must be true or false",
}


def _describe(exc: ValidationError) -> str:
    """Pydantic's report in words: our own rules as they are worded; for a malformed field, what
    the field must look like, then the details and (shortened) what was sent."""
    rules, details = [], {}
    for error in exc.errors(include_url=False):
        if error["type"] == "value_error" or not error["loc"]:
            rules.append(error["msg"].removeprefix("Value error, "))
            continue
        field, where = str(error["loc"][0]), "".join(f"[{part}]" for part in error["loc"][1:])
        details.setdefault(field, []).append(f"{field}{where}: {error['msg']}")
    parts = list(rules)
    for field, found in details.items():
        hint = FIELD_HINTS.get(field, f"`{field}` is malformed")
        parts.append(f"{hint} ({'; '.join(found[:3])}{'; …' if len(found) > 3 else ''})")
    return "invalid prompt: " + "; ".join(parts)
