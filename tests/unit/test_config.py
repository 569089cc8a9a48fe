"""Settings come from the environment, and bad values fail at startup naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sam2_api.config import Settings


def test_defaults(monkeypatch):
    for name in ("SAM2_MODEL", "SAM2_CHECKPOINT", "S3_BUCKET_NAME_STAGING", "AWS_REGION",
                 "S3_MASK_PREFIX", "SAM2_DEVICE", "SAM2_MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.sam2_model == "facebook/sam2.1-hiera-tiny"
    assert settings.sam2_device == "auto"
    assert settings.sam2_max_image_pixels == 50_000_000
    assert settings.aws_region == "us-east-1"
    assert settings.s3_mask_prefix == "sam2-api-masks/"
    assert settings.s3_bucket_name_staging is None and settings.s3_object_acl is None


def test_environment_is_read(monkeypatch, tmp_path):
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"x")
    monkeypatch.setenv("SAM2_MODEL", "facebook/sam2.1-hiera-large")
    monkeypatch.setenv("SAM2_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("S3_BUCKET_NAME_STAGING", "my-bucket")
    monkeypatch.setenv("S3_ENDPOINT_URL", "")
    settings = Settings()
    assert settings.sam2_model == "facebook/sam2.1-hiera-large"
    assert settings.sam2_checkpoint == checkpoint
    assert settings.s3_bucket_name_staging == "my-bucket"
    assert settings.s3_endpoint_url is None  # blank means unset


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("SAM2_MODEL", "facebook/sam-vit-h", "SAM2_MODEL must be one of"),
        ("SAM2_CHECKPOINT", "/no/such/file.pt", "SAM2_CHECKPOINT=/no/such/file.pt is not a file"),
        ("SAM2_DEVICE", "tpu", "sam2_device"),
        ("SAM2_MAX_IMAGE_PIXELS", "0", "sam2_max_image_pixels"),
    ],
)
def test_bad_values_fail_naming_the_variable(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=words):
        Settings()


def test_readme_documents_every_setting_and_no_other():
    import re

    from tests.conftest import REPO

    readme = (REPO / "docs" / "CONFIGURATION.md").read_text()
    table = readme[readme.index("## Every setting"):readme.index("## S3 uploads")]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", table, re.M))
    documented |= set(re.findall(r"^\| `AWS_ACCESS_KEY_ID`, `(AWS_SECRET_ACCESS_KEY)`", table, re.M))
    read_by_boto3 = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert documented == {name.upper() for name in Settings.model_fields} | read_by_boto3
