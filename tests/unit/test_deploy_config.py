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


def by_name(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] == kind}


def test_two_deployments_one_per_service_only_the_model_on_a_gpu():
    deployments = by_name("Deployment")
    assert set(deployments) == {"sam2-model", "sam2-api"}
    model = deployments["sam2-model"]["spec"]["template"]["spec"]["containers"][0]
    api = deployments["sam2-api"]["spec"]["template"]["spec"]["containers"][0]
    # args for the image's entrypoint, which runs BentoML's server of one service of the Bento
    # (tests/integration/test_separate_services.py runs the same command)
    assert model["args"][:3] == ["start-http-server", "--service-name", "SAM2Model"] and "command" not in model
    assert api["args"][:3] == ["start-http-server", "--service-name", "SAM2API"] and "command" not in api
    # the API reaches the model through the model's Service, on its port
    model_service = by_name("Service")["sam2-model"]["spec"]
    assert f"SAM2Model=http://sam2-model:{model_service['ports'][0]['port']}" in api["args"]
    assert model_service["selector"] == deployments["sam2-model"]["spec"]["selector"]["matchLabels"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in api["resources"]["limits"]
    # the public Service selects the API pods only
    entry = by_name("Service")["sam2-segment"]["spec"]["selector"]
    assert entry == deployments["sam2-api"]["spec"]["selector"]["matchLabels"]
    for container in (model, api):
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert not any(env["name"].startswith("AWS_SECRET") for env in container.get("env", []))
    assert model["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert api["envFrom"] == [{"secretRef": {"name": "sam2-s3"}}]  # S3 is the API side's
    for pod in deployments.values():
        assert pod["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    for name, hpa in by_name("HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name in deployments
        assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert set(by_name("PodDisruptionBudget")) == set(deployments)
    assert "R580" in MANIFEST.read_text()  # the GPU nodes' minimum driver, stated


def test_only_the_api_pods_reach_the_model_pods_and_both_share_the_internal_token():
    deployments = by_name("Deployment")
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    (policy,) = by_name("NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == labels["sam2-model"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": labels["sam2-api"]}}]
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        token = {env["name"]: env for env in container["env"]}["SAM2_INTERNAL_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "sam2-internal", "key": "SAM2_INTERNAL_TOKEN"}


def test_bentocloud_config_fits_bentomls_schema_and_keeps_secrets_out():
    from bentoml._internal.cloud.schemas.schemasv2 import DeploymentConfigSchema
    from bentoml._internal.utils.cattr import bentoml_cattr

    raw = yaml.safe_load((REPO / "deploy" / "bentocloud.yaml").read_text())
    config = bentoml_cattr.structure({k: v for k, v in raw.items() if k != "name"}, DeploymentConfigSchema)
    assert set(config.services) == {"SAM2API", "SAM2Model"}
    api, model = config.services["SAM2API"], config.services["SAM2Model"]
    assert model.instance_type.startswith("gpu.") and api.instance_type.startswith("cpu.")
    for service in (api, model):
        assert service.scaling.max_replicas > service.scaling.min_replicas >= 0
        assert service.config_overrides["traffic"]["concurrency"] > 0
    assert config.secrets == ["sam2-s3", "sam2-internal"]  # sam2-internal: SAM2_INTERNAL_TOKEN, for both services
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


def test_pods_run_as_the_images_non_root_user_by_number():
    """The image runs as BentoML's `bentoml` user (tests/integration/test_bento.py checks its USER); a
    name cannot be checked against runAsNonRoot, so a pod without runAsUser would never start."""
    from bentoml._internal.container.generate import BENTO_UID_GID

    for name, deployment in by_name("Deployment").items():
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == context["runAsGroup"] == BENTO_UID_GID != 0, name
