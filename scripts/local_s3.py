"""A local S3 server for trying the service without AWS: moto's server on loopback.

Creates the bucket with the seed README's public-read policy on the mask prefix, prints the
environment that points the service at it, and serves until interrupted.

    python scripts/local_s3.py --port 4566
"""

from __future__ import annotations

import argparse
import sys
import time

import boto3
from moto.server import ThreadedMotoServer

import _shared  # noqa: F401  (puts the repository's root on sys.path, for tests.support)
from tests.support.localdev import port_taken, prepare_mask_bucket

CREDENTIALS = {"aws_access_key_id": "local-test-key", "aws_secret_access_key": "local-test-secret"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4566,
                        help="default 4566, LocalStack's port too (scripts/serve.sh passes LOCAL_S3_PORT)")
    parser.add_argument("--bucket", default="sam2-local-masks")
    parser.add_argument("--prefix", default="sam2-api-masks/")
    args = parser.parse_args()

    if port_taken(args.port):  # ThreadedMotoServer.start() would wait for ever for its failed thread
        sys.exit(f"error: 127.0.0.1:{args.port} is already in use; start the local S3 server on another port "
                 f"(--port here, LOCAL_S3_PORT for scripts/serve.sh)")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{args.port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)
    prepare_mask_bucket(s3, args.bucket, args.prefix)
    print(f"S3_ENDPOINT_URL={endpoint}")
    print(f"S3_BUCKET_NAME_STAGING={args.bucket}")
    print(f"AWS_ACCESS_KEY_ID={CREDENTIALS['aws_access_key_id']}")
    print(f"AWS_SECRET_ACCESS_KEY={CREDENTIALS['aws_secret_access_key']}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
