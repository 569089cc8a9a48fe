"""What the caller asks SAM 2 to segment: points with labels, a box, or both.

Frame and unit: pixels of the upright image (EXIF orientation applied), x to the right and y
down, origin at the image's top-left corner; the image covers ``0 ≤ x ≤ W`` and ``0 ≤ y ≤ H``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidPrompt

MAX_POINTS = 64

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Lists of fixed length rather than tuples: JSON schema then has "items", which clients rely on.
Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
Box = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4)]
Label = Literal[0, 1]


class Prompt(BaseModel):
    """One object's prompt, checked for shape; :meth:`check_fits` checks it against an image."""

    model_config = ConfigDict(frozen=True)

    points: list[Point] | None = Field(None, max_length=MAX_POINTS)
    labels: list[Label] | None = None
    box: Box | None = None
    multimask_output: bool | None = None

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
        """SAM 2's advice: ask for three masks for one lone click, one mask otherwise."""
        if self.multimask_output is not None:
            return self.multimask_output
        return self.box is None and len(self.points or ()) == 1

    def point_arrays(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """``(N, 2)`` float32 (x, y) pixels and ``(N,)`` int32 labels (1 = object, default)."""
        if not self.points:
            return None, None
        labels = self.labels if self.labels is not None else [1] * len(self.points)
        return np.asarray(self.points, dtype=np.float32), np.asarray(labels, dtype=np.int32)

    def box_array(self) -> np.ndarray | None:
        """``(4,)`` float32 ``[x1, y1, x2, y2]`` pixels, or None."""
        return None if self.box is None else np.asarray(self.box, dtype=np.float32)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "invalid prompt: " + "; ".join(parts)
