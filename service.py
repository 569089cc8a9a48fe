"""The BentoML service: routes, resources and wiring. The logic lives in ``src/sam2_api``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import BentoMLException

from sam2_api import errors, imaging
from sam2_api.config import Settings
from sam2_api.model import load_sam2, pick_device, resolve_weights
from sam2_api.prompts import Prompt
from sam2_api.schemas import (
    BoxField, ImageField, LabelsField, MultimaskField, PointsField, SegmentResponse,
)
from sam2_api.segmenter import Segmenter
from sam2_api.storage import MaskStore


@contextlib.contextmanager
def http_errors():
    """Our request errors become 4xx responses carrying their message; nothing else leaks."""
    try:
        yield
    except errors.RequestError as exc:
        raise BentoMLException(str(exc), error_code=exc.status) from None


@bentoml.service(
    # Model work is serialized inside Segmenter; the extra threads decode images, encode PNGs
    # and upload to S3 while the model is busy with the next request.
    threads=4,
    traffic={"timeout": 300, "max_concurrency": 32},
)
class SAM2Segment:
    def __init__(self) -> None:
        settings = Settings()
        self.max_image_pixels = settings.sam2_max_image_pixels
        model = load_sam2(resolve_weights(settings), pick_device(settings.sam2_device))
        self.segmenter = Segmenter(model)
        self.segmenter.warm_up()
        self.store = MaskStore(settings)

    @bentoml.api
    def segment(
        self,
        image: Annotated[Path, ImageField],
        points: PointsField = None,
        labels: LabelsField = None,
        box: BoxField = None,
        multimask_output: MultimaskField = None,
    ) -> SegmentResponse:
        """Segment one object in `image` from clicks and/or a box; the mask goes to S3."""
        with http_errors():
            rgb = imaging.load_upright_rgb(image.read_bytes(), self.max_image_pixels)
            height, width = rgb.shape[:2]
            prompt = Prompt.parse(
                points=points, labels=labels, box=box, multimask_output=multimask_output
            )
            prompt.check_fits(width, height)
        mask = self.segmenter.segment(rgb, prompt)
        url = self.store.put(imaging.mask_to_png(mask.pixels))
        return SegmentResponse(mask_url=url, score=mask.score, width=width, height=height)
