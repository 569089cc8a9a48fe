"""Fixtures shared by unit and integration tests: paths, test weights, Meta's reference predictor."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "tests" / "data"  # real photographs, with their licences in its README.md
CHECKPOINT = REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt"
# A second size, for SAM2_MODELS (tests/unit/test_model_set.py, tests/integration/test_model_sizes.py).
SMALL_CHECKPOINT = REPO / "checkpoints" / "sam2.1_hiera_small.RANDOM-TEST-WEIGHTS.pt"
REFERENCE_IMAGES_KEPT = 16  # encoded images the reference predictor keeps (about 16 MB each)


@pytest.fixture(scope="session")
def test_images() -> Path:
    if not TEST_IMAGES.is_dir():
        pytest.fail(f"test images not found at {TEST_IMAGES}")
    return TEST_IMAGES


def _written(path: Path, *size: str) -> Path:
    if not path.exists():
        subprocess.run([sys.executable, "scripts/make_test_checkpoint.py", *size, "--output", str(path)],
                       cwd=REPO, check=True)
    return path


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    """Seeded random-init SAM 2.1 hiera-tiny weights, written by the project's own script."""
    return _written(CHECKPOINT)


@pytest.fixture(scope="session")
def small_checkpoint() -> Path:
    """Seeded random-init SAM 2.1 hiera-small weights (5 s and 184 MB, written once)."""
    return _written(SMALL_CHECKPOINT, "--size", "small")


@pytest.fixture(scope="session")
def sam2_model(checkpoint):
    from sam2.build_sam import build_sam2

    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(checkpoint), device="cpu")


@pytest.fixture(scope="session")
def small_sam2_model(small_checkpoint):
    from sam2.build_sam import build_sam2

    return build_sam2("configs/sam2.1/sam2.1_hiera_s.yaml", str(small_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def reference_predictor(sam2_model):
    """Meta's SAM2ImagePredictor with ``image`` set: one predictor per image, kept for the session, so
    that each image is encoded once however many prompts the tests check against it. Calling
    ``predict`` leaves the predictor's image as it was; tests must not call ``set_image`` on it."""
    return predictors_of(sam2_model)


@pytest.fixture(scope="session")
def small_reference_mask(small_sam2_model):
    """:func:`reference_mask` of the hiera-small weights."""
    return reference_masks(predictors_of(small_sam2_model))


def predictors_of(sam2_model):
    """:func:`reference_predictor` of ``sam2_model``."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictors: OrderedDict[tuple, SAM2ImagePredictor] = OrderedDict()

    def for_image(image: np.ndarray) -> SAM2ImagePredictor:
        key = (image.shape, image.dtype.str, hashlib.sha256(np.ascontiguousarray(image)).hexdigest())
        if key not in predictors:
            predictor = SAM2ImagePredictor(sam2_model)
            predictor.set_image(image)
            predictors[key] = predictor
            if len(predictors) > REFERENCE_IMAGES_KEPT:
                predictors.popitem(last=False)
        predictors.move_to_end(key)
        return predictors[key]

    return for_image


@pytest.fixture(scope="session")
def reference_mask(reference_predictor):
    """Meta's SAM2ImagePredictor, used the way its README shows: the expected mask for a request.

    Returns ``(mask (H, W) bool, score)`` for the highest-scoring candidate.
    """
    return reference_masks(reference_predictor)


def reference_masks(reference_predictor):
    """:func:`reference_mask` over ``reference_predictor``'s predictors."""

    def predict(image: np.ndarray, points=None, labels=None, box=None, multimask_output=None):
        if multimask_output is None:
            multimask_output = box is None and points is not None and len(points) == 1
        if points is not None and labels is None:
            labels = [1] * len(points)
        masks, scores, _ = reference_predictor(image).predict(
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


def pytest_collection_modifyitems(items) -> None:
    """``server``: every test under tests/integration (each starts or uses real processes: `bentoml
    serve` and moto servers, scripts/serve.sh, `bentoml build`). ``slow``: those, and every test that
    needs the SAM 2 weights to run the model in this process. ``-m "not slow"`` leaves the pure-logic
    tests; ``-m "not server"`` the unit tests, the model's included."""
    integration = REPO / "tests" / "integration"
    for item in items:
        if integration in Path(item.path).parents:
            item.add_marker(pytest.mark.server)
            item.add_marker(pytest.mark.slow)
        elif {"checkpoint", "small_checkpoint"} & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
