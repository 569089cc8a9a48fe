"""The Bento, offline: test weights imported into a model store, built, served, and its Dockerfile."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import bentoml
import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import ACCESS_KEY, BUCKET, SECRET_KEY
from tests.support.localdev import BIN, bento_server, clean_env
from tests.integration.test_segment_api import fetch_mask, post

MODEL_NAME = "sam2.1-hiera-tiny-random-test"


def run(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def bentoml_home(tmp_path_factory):
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="module")
def built(bentoml_home, checkpoint):
    """(model tag, bento tag, bento directory) after import + build, as a user would run them."""
    env = clean_env(BENTOML_HOME=str(bentoml_home))
    model_tag = run([sys.executable, "scripts/import_model.py", "--model", "facebook/sam2.1-hiera-tiny",
                     "--checkpoint", str(checkpoint), "--name", MODEL_NAME,
                     "--source", "random-init test weights (scripts/make_test_checkpoint.py)"], env)
    bento_tag = run(["bash", "scripts/build_bento.sh", model_tag], env).splitlines()[-1]
    name, version = bento_tag.split(":")
    return model_tag, bento_tag, bentoml_home / "bentos" / name / version


def test_model_store_records_variant_and_source(built, bentoml_home):
    model_tag, _, _ = built
    env = clean_env(BENTOML_HOME=str(bentoml_home))
    info = json.loads(run([str(BIN / "bentoml"), "models", "get", model_tag, "-o", "json"], env))
    assert info["labels"] == {"variant": "sam2.1-hiera-tiny",
                              "source": "random-init test weights (scripts/make_test_checkpoint.py)",
                              "weights": "random-test-weights"}  # marked by the file itself
    assert info["metadata"]["config"] == "configs/sam2.1/sam2.1_hiera_t.yaml"
    checkpoint = bentoml_home / "models" / model_tag.replace(":", "/") / "checkpoint.pt"
    assert checkpoint.stat().st_size > 100_000_000
    assert (checkpoint.parent / "decoder.onnx").stat().st_size > 10_000_000  # the browser's decoder, carried along


def test_bento_holds_the_model_and_only_what_serving_needs(built):
    model_tag, _, bento_dir = built
    manifest = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    # BentoML 1.4 references the model by exact tag; containerize and push copy it from the store.
    services = {service["name"]: service for service in manifest["services"]}
    assert set(services) == {"SAM2API", "SAM2Model"} and manifest["entry_service"] == "SAM2API"
    assert [m["tag"] for m in services["SAM2Model"]["models"]] == [model_tag]
    assert services["SAM2Model"]["config"]["resources"]["gpu"] == 1
    assert "gpu" not in services["SAM2API"]["config"].get("resources", {})
    files = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*") if p.is_file()}
    assert files == {"service.py", "bento/packaged.env", "bentofile.yaml"}
    assert (bento_dir / "src" / "bento" / "packaged.env").read_text().splitlines() == [
        f"SAM2_BENTO_MODEL={model_tag}", "SAM2_MODELS=facebook/sam2.1-hiera-tiny", "SAM2_MODEL=facebook/sam2.1-hiera-tiny"]
    assert not (REPO / "bento" / "packaged.env").exists()  # the build cleans up after itself


def test_generated_dockerfile(built):
    _, _, bento_dir = built
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M), dockerfile[:400]
    assert "EXPOSE 3000" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    ours = (REPO / "bento" / "requirements.txt").read_text().splitlines()
    extra = requirements.splitlines()[len(ours):]
    assert requirements.splitlines()[: len(ours)] == ours
    assert set(extra) <= {f"bentoml=={bentoml.__version__}"}  # BentoML re-pins itself, same version
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "nvidia-cudnn-cu13=="):
        assert pin in requirements  # CUDA-capable torch, as CI tests it
    wheels = {p.name for p in (bento_dir / "env" / "python" / "wheels").iterdir()}
    assert wheels == {"sam2-1.1.0-py3-none-any.whl", "sam2_api-0.1.0-py3-none-any.whl"}


def test_built_bento_serves_segment(built, s3, s3_server, logs, reference_mask, test_images):
    _, bento_tag, _ = built
    served = bento_server("bento", logs, project=REPO, env={
        "BENTOML_HOME": str(built[2].parents[2]), "S3_BUCKET_NAME_STAGING": BUCKET,
        "S3_ENDPOINT_URL": s3_server.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }, target=bento_tag)
    served.start("/readyz")
    try:
        path = test_images / "coffee.png"
        response = post(served, path.read_bytes(), points=[[300, 200]])
        assert response.status_code == 200, response.text
        expected, _ = reference_mask(upright_rgb(path), points=[[300, 200]])
        assert np.array_equal(fetch_mask(response.json()["mask_url"]) == 255, expected)
        assert f"bento model {MODEL_NAME}:" in served.log()  # the packaged weights, not a download
        decoder = httpx.get(f"{served.url}/decoder.onnx", timeout=120)
        assert decoder.status_code == 200 and len(decoder.content) > 10_000_000
        assert "ONNX decoder of facebook/sam2.1-hiera-tiny read from the Bento's model" in served.log()  # not exported again
    finally:
        served.stop()


def test_importing_random_weights_without_a_name_never_takes_the_real_models_name(bentoml_home, checkpoint):
    env = clean_env(BENTOML_HOME=str(bentoml_home))
    tag = run([sys.executable, "scripts/import_model.py", "--model", "facebook/sam2.1-hiera-tiny",
               "--checkpoint", str(checkpoint)], env)
    assert tag.startswith("sam2.1-hiera-tiny-random-test:")
