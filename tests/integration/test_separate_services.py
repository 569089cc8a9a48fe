"""The two services served apart, as Kubernetes runs them: the API service reaches the model service
over HTTP. `start-http-server` is what the container's entrypoint runs for the manifests' args.

The model service unpickles what it is sent (BentoML's calls between services carry pickles), so
only the API service, holding the shared SAM2_INTERNAL_TOKEN, may call it (sam2_api.server.hop)."""

from __future__ import annotations

import pickle
import sys

import httpx
import numpy as np
import pytest

from tests.support.localdev import Process, clean_env, free_port
from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import ACCESS_KEY, BUCKET, SECRET_KEY
from tests.integration.test_segment_api import fetch_mask, post


def start_http_server(name: str, logs, env: dict[str, str], *args: str) -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "bentoml_cli._internal.start", "start-http-server", "--host", "127.0.0.1",
            "--port", str(port), *args, "."]
    home = logs / f"{name}-bentoml-home"
    return Process(name, argv, clean_env(BENTOML_HOME=str(home), **env), logs, f"http://127.0.0.1:{port}", cwd=REPO)


INTERNAL_TOKEN = "internal-token-for-the-tests-0123456789"  # as a Kubernetes Secret gives both services
PICKLE = "application/vnd.bentoml+pickle"


class CreatesAFile:
    """A pickle whose unpickling creates the file ``path``: what an attacker's would run instead."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def model_service(checkpoint, logs):
    served = start_http_server("apart-model", logs, {"SAM2_CHECKPOINT": str(checkpoint),
                                                     "SAM2_INTERNAL_TOKEN": INTERNAL_TOKEN},
                               "--service-name", "SAM2Model")
    served.start("/readyz")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def api_service(model_service, s3, s3_server, logs):
    served = start_http_server("apart-api", logs, {
        "S3_BUCKET_NAME_STAGING": BUCKET, "S3_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "SAM2_API_WORKERS": "2",
        "SAM2_INTERNAL_TOKEN": INTERNAL_TOKEN,
    }, "--service-name", "SAM2API", "--depends", f"SAM2Model={model_service.url}")
    served.start("/readyz")
    yield served
    served.stop()


def test_the_api_service_alone_segments_through_the_model_service(api_service, model_service, reference_mask,
                                                                  test_images):
    path = test_images / "rocket.jpg"
    first = post(api_service, path.read_bytes(), points=[[320, 200]])
    again = post(api_service, path.read_bytes(), box=[250, 20, 420, 420])
    assert (first.status_code, again.status_code) == (200, 200), first.text
    assert [first.headers["x-embedding-cache"], again.headers["x-embedding-cache"]] == ["miss", "hit"]
    for response, fields in ((first, {"points": [[320, 200]]}), (again, {"box": [250, 20, 420, 420]})):
        expected, _ = reference_mask(upright_rgb(path), **fields)
        assert np.array_equal(fetch_mask(response.json()["mask_url"]) == 255, expected)
    assert "loaded SAM 2" in model_service.log() and "loaded SAM 2" not in api_service.log()


def test_without_the_model_service_the_api_answers_503_and_recovers(api_service, model_service, test_images):
    data = (test_images / "chelsea.png").read_bytes()
    model_service.stop()
    try:
        response = post(api_service, data, points=[[225, 150]])
        assert response.status_code == 503, response.text
        assert response.json() == {"error": "the model service is not reachable right now; retry shortly"}
    finally:
        model_service.start("/readyz")
    assert post(api_service, data, points=[[225, 150]]).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"X-SAM2-Internal-Token": "a-guess"},
                                     {"X-SAM2-Internal-Token": INTERNAL_TOKEN[:-1]}], ids=["none", "wrong", "prefix"])
def test_the_model_service_refuses_a_caller_without_the_token_before_reading_its_pickle(model_service, tmp_path,
                                                                                        headers):
    planted = tmp_path / "unpickled"
    response = httpx.post(model_service.url + "/predict", content=pickle.dumps(CreatesAFile(planted)),
                          headers={"Content-Type": PICKLE, **headers}, timeout=30)
    assert response.status_code == 401, response.text
    assert "X-SAM2-Internal-Token" in response.json()["error"]
    assert not planted.exists()
    # every route, not only /predict; health stays open for the probes
    for route in ("/everything", "/track", "/cancel_track", "/docs.json"):
        assert httpx.post(model_service.url + route, content=b"{}", headers=headers, timeout=30).status_code == 401
    assert httpx.get(model_service.url + "/readyz", timeout=30).status_code == 200


def test_the_model_service_on_its_own_does_not_start_without_a_token(checkpoint, logs):
    alone = start_http_server("apart-model-no-token", logs, {"SAM2_CHECKPOINT": str(checkpoint)},
                              "--service-name", "SAM2Model")
    with pytest.raises(RuntimeError, match="exited"):
        alone.start("/readyz", timeout=120)
    assert "error: SAM2_INTERNAL_TOKEN is not set" in alone.log()


def test_the_local_socket_of_bentoml_serve_refuses_a_caller_without_the_token(server, tmp_path):
    """`bentoml serve` runs the model service on a Unix socket that any local user may open: the
    random token of that start guards it as the shared one guards TCP."""
    planted = tmp_path / "unpickled"
    with httpx.Client(transport=httpx.HTTPTransport(uds=server.dependency_socket("SAM2Model")),
                      base_url="http://model") as local:
        response = local.post("/predict", content=pickle.dumps(CreatesAFile(planted)),
                              headers={"Content-Type": PICKLE}, timeout=30)
        assert response.status_code == 401, response.text
        assert local.get("/readyz", timeout=30).status_code == 200
    assert not planted.exists()
