"""Session-wide real servers: one local S3 (moto), and `bentoml serve` with and without S3."""

from __future__ import annotations

import boto3
import pytest

from tests.support.fake_label_studio import FakeLabelStudio
from tests.support.localdev import Process, bento_server, moto_server, prepare_mask_bucket
from tests.conftest import REPO

BUCKET = "sam2-test-masks"
PRIVATE_BUCKET = "sam2-private-masks"  # guarded_server's: masks reached through presigned URLs only
PHOTOS = "sam2-test-photos"  # images users keep in S3, read through image_url
PREFIX = "sam2-api-masks/"
ACCESS_KEY = "AKIAINTEGRATIONTEST1"
SECRET_KEY = "integration/SECRET/key/that/must/never/leak"
API_KEYS = ("first-api-key-0123456789", "second-api-key-9876543210")
# guarded_server's Label Studio (tests/support/fake_label_studio.py): the token the service sends it, and
# the project owner's token that Label Studio puts in /setup's body (which the service never uses)
LABEL_STUDIO_KEY = "label-studio-token-0123456789abcdef"
LABEL_STUDIO_ACCESS_TOKEN = "owner-access-token-fedcba9876543210"
SECRETS = (SECRET_KEY, *API_KEYS, LABEL_STUDIO_KEY, LABEL_STUDIO_ACCESS_TOKEN)
# How long a server's workers let requests in flight finish once stopped: at the default 5 s, a test
# server's stop waited that long for its idle connections. Stopping is tested in test_start_stop.py.
QUICK_STOP = {"SAM2_SHUTDOWN_GRACE_S": "1"}
# Small, so that the tests reach each video limit with small clips (tests/integration/test_track_api.py).
VIDEO_LIMITS = {"SAM2_VIDEO_MAX_FRAMES": "24", "SAM2_VIDEO_MAX_PIXELS": str(320 * 240),
                "SAM2_VIDEO_MAX_UPLOAD_BYTES": str(2 * 1024**2)}
# /segment_everything's requests here take 10-25 s on a quiet 2-core machine; the default 60 s deadline
# was passed on a busy CI machine (16 of 64 points done). The deadline's 503s are tested in the unit tests
# (test_everything.py, test_everything_pipeline.py) with deadlines of their own.
SLOW_MACHINE_DEADLINE = {"SAM2_EVERYTHING_DEADLINE_S": "240"}


def prepare_bucket(s3) -> None:
    """The mask bucket with the seed's public-read policy, and a photo bucket; safe to repeat."""
    prepare_mask_bucket(s3, BUCKET, PREFIX, PHOTOS)


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
    """Every server's output. At the end of the session, none of it may hold a secret."""
    directory = tmp_path_factory.mktemp("server-logs")
    yield directory
    leaked = [p.name for p in directory.glob("*.log") if any(s in p.read_text(errors="replace") for s in SECRETS)]
    assert not leaked, f"a secret reached these server logs: {leaked}"


@pytest.fixture(scope="session")
def s3_server(logs) -> Process:
    server = moto_server(logs)
    server.start("/moto-api/")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_server):
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    prepare_bucket(client)
    return client


@pytest.fixture(scope="session")
def server(s3, s3_server, checkpoint, small_checkpoint, logs) -> Process:
    """The service as a user runs it against their bucket (here the local S3 server). It serves two
    sizes: tiny, the default, loaded at start; small, loaded by the first request that names it
    (tests/integration/test_model_sizes.py), so the others never pay for it."""
    served = bento_server("bentoml-s3", logs, project=REPO, env={
        "SAM2_CHECKPOINT": str(checkpoint),
        "SAM2_MODELS": "hiera_tiny,hiera_small",
        "SAM2_CHECKPOINTS": f"hiera_small={small_checkpoint}",
        "S3_BUCKET_NAME_STAGING": BUCKET,
        "S3_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "S3_INPUT_BUCKETS": PHOTOS,
        **VIDEO_LIMITS, **QUICK_STOP, **SLOW_MACHINE_DEADLINE,
    })
    served.start("/readyz")
    yield served
    served.stop()


@pytest.fixture(scope="session")
def label_studio(test_images) -> FakeLabelStudio:
    """Label Studio's file routes on loopback, for guarded_server (LABEL_STUDIO_URL): two uploaded images."""
    files = {f"/data/upload/1/{name}": (test_images / name).read_bytes() for name in ("chelsea.png", "coffee.png")}
    server = FakeLabelStudio(files, LABEL_STUDIO_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def guarded_server(s3, s3_server, checkpoint, logs, label_studio) -> Process:
    """API keys on, a 2 MB upload limit, and a private bucket served through presigned URLs
    (tests/integration/test_reliability.py; test_fairness.py's two keys); Label Studio's files
    from a local stand-in (tests/integration/test_labelstudio_api.py)."""
    s3.create_bucket(Bucket=PRIVATE_BUCKET)
    served = bento_server("bentoml-guarded", logs, project=REPO, env={
        "SAM2_CHECKPOINT": str(checkpoint), "S3_BUCKET_NAME_STAGING": PRIVATE_BUCKET,
        "S3_ENDPOINT_URL": s3_server.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "SAM2_API_KEYS": ",".join(API_KEYS), "SAM2_MAX_UPLOAD_BYTES": "2000000",
        "S3_URL_MODE": "presigned", "S3_PRESIGN_EXPIRES": "300",
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LABEL_STUDIO_KEY, **QUICK_STOP,
    })
    served.start("/readyz")
    yield served
    served.stop()


@pytest.fixture(scope="session")
def server_without_s3(checkpoint, logs) -> Process:
    served = bento_server("bentoml-no-s3", logs, project=REPO, env={"SAM2_CHECKPOINT": str(checkpoint), **QUICK_STOP})
    served.start("/readyz")
    yield served
    served.stop()
