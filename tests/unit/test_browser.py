"""The browser decoder's pieces: the ONNX export of SAM 2's prompt encoder + mask decoder against
Meta's predictor (other image sizes and prompt lengths than the export's), its disk cache, and the
embedding's .npz and ETag rules."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from sam2_api.api.browser import not_modified, npz, parse_dtype
from sam2_api.errors import InvalidField
from sam2_api.messages_browser import EMBEDDING_SHAPES
from tests.conftest import upright_rgb


def embedding(value: float = 0.5) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=np.float16) for name, shape in EMBEDDING_SHAPES.items()}


def test_the_npz_is_numpys_and_the_same_embedding_makes_the_same_bytes():
    body = npz(embedding(), 427, 640)
    assert body == npz(embedding(), 427, 640) and body != npz(embedding(0.25), 427, 640)
    with np.load(io.BytesIO(body)) as arrays:
        assert arrays.files == [*EMBEDDING_SHAPES, "original_image_size"]
        assert arrays["original_image_size"].tolist() == [427, 640] and arrays["image_features_0"].dtype == np.float16
    assert 8_389_000 < len(body) < 8_390_000  # 4,194,304 float16 values and 4 small headers


def test_an_embedding_of_another_shape_is_refused():
    arrays = {**embedding(), "image_embeddings": np.zeros((1, 256, 32, 32), np.float16)}
    with pytest.raises(ValueError, match="image_embeddings has shape"):
        npz(arrays, 10, 10)


@pytest.mark.parametrize("header, matches", [
    (None, False), ("", False), ('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True), ('"abd"', False),
])
def test_if_none_match(header, matches):
    assert not_modified(header, '"abc"') is matches


def test_dtype():
    assert (parse_dtype(None), parse_dtype("float32")) == ("float16", "float32")
    with pytest.raises(InvalidField, match="`dtype` must be"):
        parse_dtype("int8")


CASES = [  # (image, points, labels, box, multimask): as /segment would send them to the predictor
    ("astronaut.png", [[200, 150]], None, None, True),
    ("camera.png", None, None, [100, 60, 400, 450], False),
    ("rocket.jpg", [[320, 200], [100, 50], [30, 300]], [1, 0, 1], [250, 20, 420, 420], False),
    ("chelsea.png", [[225, 150]], None, None, False),
]


@pytest.fixture(scope="module")
def onnx_decoder(sam2_model):
    import onnxruntime

    from sam2_api.model.decoder_export import check_parity, export

    onnx = export(sam2_model)
    assert check_parity(sam2_model, onnx).ok
    return onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, points, labels, box, multimask", CASES, ids=[c[0] for c in CASES])
def test_the_onnx_decoder_gives_meta_predictors_mask(onnx_decoder, reference_predictor, test_images,
                                                      name, points, labels, box, multimask):
    image = upright_rgb(test_images / name)
    predictor = reference_predictor(image)
    expected, scores, low_res = predictor.predict(
        point_coords=None if points is None else np.array(points, np.float32),
        point_labels=None if points is None else np.array(labels or [1] * len(points)),
        box=None if box is None else np.array(box, np.float32), multimask_output=multimask)
    best = int(np.argmax(scores))
    features = predictor._features
    coords = ([box[:2], box[2:]] if box else []) + (points or [])
    codes = ([2, 3] if box else []) + ((labels or [1] * len(points)) if points else [])
    masks, iou, low = onnx_decoder.run(None, {
        "image_embeddings": features["image_embed"].numpy(),
        "image_features_0": features["high_res_feats"][0].numpy(),
        "image_features_1": features["high_res_feats"][1].numpy(),
        "point_coords": np.array([coords], np.float32), "point_labels": np.array([codes], np.int32),
        "input_masks": np.zeros((1, 1, 256, 256), np.float32), "has_input_masks": np.zeros(1, np.float32),
        "original_image_size": np.array(image.shape[:2], np.int32),
    })
    index = 1 + int(np.argmax(iou[0, 1:])) if multimask else 0
    assert masks.shape == (1, 4, *image.shape[:2])
    assert float(((masks[0, index] > 0) != expected[best].astype(bool)).mean()) <= 0.001
    assert abs(float(iou[0, index]) - float(scores[best])) < 1e-4
    assert np.abs(low[0, index] - low_res[best]).max() < 1e-3


def test_the_export_is_kept_on_disk_under_the_weights_digest(sam2_model, checkpoint, tmp_path, caplog):
    from sam2_api.model.decoder_export import DecoderModels

    caplog.set_level(logging.INFO, logger="sam2_api.model.decoder_export")
    first = DecoderModels(tmp_path)
    first.start("default", sam2_model, checkpoint)
    onnx = first.get("default", timeout_s=300)
    assert onnx is not None and [path.suffix for path in tmp_path.iterdir()] == [".onnx"]
    assert "exported" in caplog.text and "ok" in caplog.text
    caplog.clear()
    again = DecoderModels(tmp_path)  # a restart with the same weights
    again.start("default", sam2_model, checkpoint)
    assert again.get("default", timeout_s=60) == onnx and "read from" in caplog.text
    with pytest.raises(KeyError):
        again.get("another-model", timeout_s=1)


def test_the_bento_s_model_carries_the_decoder_and_the_service_reads_it(checkpoint, tmp_path):
    """scripts/import_model.py's store_weights exports the decoder into the stored model (so that the
    Bento carries it); packaged_weights names it, and DecoderModels serves that file without exporting."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    script = f"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from pathlib import Path
from sam2_api.model.weights import store_weights, packaged_weights
from sam2_api.model.decoder_export import DecoderModels
import bentoml
model = store_weights("facebook/sam2.1-hiera-tiny", Path({str(checkpoint)!r}), "decoder-test", "test")
source = packaged_weights(bentoml.models.get(model.tag))  # as the service finds it in the store
print("DECODER", source.decoder, source.decoder.stat().st_size)
models = DecoderModels(Path({str(tmp_path / 'cache')!r}))
models.start("default", None, source.checkpoint, source.decoder)
print("SERVED", len(models.get("default", timeout_s=60)))
"""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"),
           "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    decoder_line = next(line for line in result.stdout.splitlines() if line.startswith("DECODER"))
    _, path, size = decoder_line.split()
    assert path.startswith(str(tmp_path / "bentoml")) and path.endswith("decoder.onnx") and int(size) > 10_000_000
    assert f"SERVED {size}" in result.stdout and "read from the Bento's model" in result.stdout
    assert "onnxruntime vs torch on a fixed prompt" in result.stdout and ": ok" in result.stdout
    assert not (tmp_path / "cache").exists()  # nothing exported at start-up
