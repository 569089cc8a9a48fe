"""Users generate clients from /docs.json: a real generator's client must segment an image."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import httpx
import numpy as np
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.support.localdev import BIN
from tests.conftest import upright_rgb
from tests.integration.test_segment_api import fetch_mask


def test_the_served_document_is_valid_openapi_3_1(server):
    spec = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    assert spec["openapi"] == "3.1.0" and spec["info"]["title"] == "SAM 2 segmentation API"
    assert [e.message for e in OpenAPIV31SpecValidator(spec).iter_errors()] == []


def test_a_client_generated_by_openapi_python_client_segments_an_image(server, reference_mask, test_images,
                                                                      tmp_path, monkeypatch):
    (tmp_path / "spec.json").write_text(httpx.get(f"{server.url}/docs.json", timeout=10).text)
    (tmp_path / "config.yaml").write_text("post_hooks: []\n")  # no formatter needed to use the code
    subprocess.run([str(BIN / "openapi-python-client"), "generate", "--path", "spec.json", "--config", "config.yaml",
                    "--meta", "none", "--output-path", "generated"], cwd=tmp_path, check=True, capture_output=True,
                   timeout=300)
    monkeypatch.syspath_prepend(str(tmp_path))
    client_module = importlib.import_module("generated")
    segment = importlib.import_module("generated.api.service_ap_is.sam2api_segment")
    models = importlib.import_module("generated.models")
    types = importlib.import_module("generated.types")
    client = client_module.Client(base_url=server.url, timeout=120)

    path = test_images / "coffee.png"
    with path.open("rb") as image:  # multipart: the file, and the JSON-valued fields as JSON text
        form = models.Sam2ApiSegmentFilesInput(image=types.File(payload=image, file_name=path.name),
                                               points=json.dumps([[300, 200]]), image_id="generated-client-cup")
        uploaded = segment.sync(client=client, body=form)
    expected, score = reference_mask(upright_rgb(path), points=[[300, 200]])
    assert (uploaded.width, uploaded.height) == (600, 400) and abs(uploaded.score - score) < 1e-6
    assert np.array_equal(fetch_mask(uploaded.mask_url) == 255, expected)

    # JSON: the cached image by its id, the prompt as JSON values; errors as the Error model.
    by_id = segment.sync(client=client, body=models.Sam2ApiSegmentJsonInput(image_id="generated-client-cup",
                                                                             box=[150, 50, 450, 350]))
    expected, _ = reference_mask(upright_rgb(path), box=[150, 50, 450, 350])
    assert np.array_equal(fetch_mask(by_id.mask_url) == 255, expected)
    error = segment.sync(client=client, body=models.Sam2ApiSegmentJsonInput(image_id="never-sent-by-anyone",
                                                                             points=[[1, 1]]))
    assert isinstance(error, models.Error) and "is not cached here" in error.error
    for name in [m for m in sys.modules if m == "generated" or m.startswith("generated.")]:
        del sys.modules[name]
