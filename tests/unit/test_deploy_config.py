"""The deployment files, checked offline: Kubernetes schemas, BentoCloud's config schema, README."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

K8S_VERSION = "1.30.0"
MANIFEST = REPO / "deploy" / "kubernetes" / "sam2-segment.yaml"


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: d["kind"])
def test_manifests_validate_against_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_deployment_requests_a_gpu_probes_health_and_takes_secrets_from_a_secret():
    by_kind = {doc["kind"]: doc for doc in documents()}
    pod = by_kind["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["envFrom"] == [{"secretRef": {"name": "sam2-s3"}}]
    assert not any(env["name"].startswith("AWS_SECRET") for env in container.get("env", []))
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 1 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_bentocloud_config_fits_bentomls_schema_and_keeps_secrets_out():
    from bentoml._internal.cloud.schemas.schemasv2 import DeploymentConfigSchema
    from bentoml._internal.utils.cattr import bentoml_cattr

    raw = yaml.safe_load((REPO / "deploy" / "bentocloud.yaml").read_text())
    config = bentoml_cattr.structure({k: v for k, v in raw.items() if k != "name"}, DeploymentConfigSchema)
    service = config.services["SAM2Segment"]
    assert service.scaling.min_replicas == 0 and service.scaling.max_replicas >= 2
    assert service.config_overrides["traffic"]["concurrency"] > 0
    assert config.secrets == ["sam2-s3"]
    assert {env.name for env in config.envs} == {"AWS_REGION"}  # nothing secret in plain envs


def test_readme_commands_are_the_ones_the_files_support():
    readme = (REPO / "README.md").read_text() + (REPO / "docs" / "DEPLOY.md").read_text()
    assert "bentoml deploy sam2-segment:latest -f deploy/bentocloud.yaml" in readme
    assert "kubectl apply -f deploy/kubernetes/sam2-segment.yaml" in readme
    assert "bentoml secret create sam2-s3" in readme
    for script in re.findall(r"\./scripts/([\w.]+)", readme):
        assert (REPO / "scripts" / script).exists(), script


def test_lock_files_match_the_tested_environment():
    """The Bento installs bento/requirements.txt: it must be what this (CI's) venv runs."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "scripts/lock_requirements.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
