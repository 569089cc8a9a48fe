"""Fixtures shared by unit and integration tests: paths, test weights, Meta's reference predictor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "tests" / "data"  # real photographs, with their licences in its README.md
CHECKPOINT = REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt"


@pytest.fixture(scope="session")
def test_images() -> Path:
    if not TEST_IMAGES.is_dir():
        pytest.fail(f"test images not found at {TEST_IMAGES}")
    return TEST_IMAGES


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    """Seeded random-init SAM 2.1 hiera-tiny weights, written by the project's own script."""
    if not CHECKPOINT.exists():
        subprocess.run(
            [sys.executable, "scripts/make_test_checkpoint.py", "--output", str(CHECKPOINT)],
            cwd=REPO, check=True,
        )
    return CHECKPOINT


@pytest.fixture(scope="session")
def sam2_model(checkpoint):
    from sam2.build_sam import build_sam2

    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(checkpoint), device="cpu")


@pytest.fixture(scope="session")
def reference_mask(sam2_model):
    """Meta's SAM2ImagePredictor, used the way its README shows: the expected mask for a request.

    Returns ``(mask (H, W) bool, score)`` for the highest-scoring candidate.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(sam2_model)

    def predict(image: np.ndarray, points=None, labels=None, box=None, multimask_output=None):
        if multimask_output is None:
            multimask_output = box is None and points is not None and len(points) == 1
        if points is not None and labels is None:
            labels = [1] * len(points)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(
            point_coords=None if points is None else np.asarray(points, dtype=np.float32),
            point_labels=None if labels is None else np.asarray(labels),
            box=None if box is None else np.asarray(box, dtype=np.float32),
            multimask_output=multimask_output,
        )
        best = int(np.argmax(scores))
        return masks[best] > 0, float(scores[best])

    return predict


def upright_rgb(path: Path) -> np.ndarray:
    """The image as a user would hand it to SAM2ImagePredictor: EXIF applied, 8-bit RGB."""
    with Image.open(path) as image:
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))
