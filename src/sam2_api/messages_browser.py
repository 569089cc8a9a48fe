"""What crosses between the two services for decoding in the browser: an image's embedding
(``POST /embed``) and the ONNX prompt encoder + mask decoder (``GET /decoder.onnx``).

Kept beside :mod:`sam2_api.messages` (the rest of the contract) under the same rules: BentoML pickles
these by module path, so both services run this same code.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, WithJsonSchema

from .messages import Failure

EmbedDtype = Literal["float16", "float32"]
# The arrays of an embedding, as the ONNX decoder's inputs name them, and their shapes (SAM 2's 1024 input).
EMBEDDING_SHAPES = {
    "image_embeddings": (1, 256, 64, 64),
    "image_features_0": (1, 32, 256, 256),
    "image_features_1": (1, 64, 128, 128),
}
DEFAULT_DECODER = "default"  # the name of the loaded model's decoder (one model per service today)


class EmbedReply(BaseModel):
    """An image's embedding from the model service's cache (or computed now), or ``needs_image``
    when the key is not cached and no image came, or a request error. ``arrays`` are named as
    :data:`EMBEDDING_SHAPES`; ``width`` and ``height`` are the upright image's."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    needs_image: bool = False
    arrays: dict[str, Annotated[np.ndarray, WithJsonSchema({"type": "string", "format": "binary"})]] = {}
    width: int = 0
    height: int = 0
    cached: bool = False
    seconds: dict[str, float] = {}
    failure: Failure | None = None


class DecoderReply(BaseModel):
    """The ONNX decoder's bytes; ``pending`` while it is still being exported; ``error`` when the
    export failed (the model service's log says why)."""

    onnx: bytes | None = None
    pending: bool = False
    error: str | None = None
