"""Local servers for development, tests and benchmarks: moto's S3 server and `bentoml serve`.

Each runs in its own process group on a free loopback port, with its output in a log file. The
tests, `scripts/benchmark.py`, `scripts/load_test.py` and `scripts/local_s3.py` all start their
servers (and the public-read mask bucket) through this one module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not listen on ``host``:``port`` (with SO_REUSEADDR, as werkzeug's and
    uvicorn's servers set it)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AWS/S3/SAM2 setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "SAM2_"))}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", **extra})
    return env


class Process:
    """A server in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, url: str,
                 cwd: Path | None = None):
        self.name, self.argv, self.env, self.url, self.cwd = name, argv, env, url, cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        """Start the process and return at once."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, ready_path: str, timeout: float = 240) -> None:
        """Start the process and wait until ``ready_path`` answers 200."""
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log()[-4000:]}")

    def family(self) -> list[psutil.Process]:
        """The process and every process it started (BentoML's workers run in sessions of their own,
        out of its process group)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def dependency_socket(self, service: str) -> str:
        """The Unix socket on which `bentoml serve` runs the dependency ``service`` (its API workers
        find it in BENTOML_RUNNER_MAP): the door a local user could knock on."""
        for process in self.family():
            runner_map = process.environ().get("BENTOML_RUNNER_MAP")
            if runner_map:
                return json.loads(runner_map)[service].removeprefix("file://")
        raise LookupError(f"{self.name} runs no dependency {service} on a local socket")

    def stop(self) -> None:
        """SIGTERM, as Ctrl+C or Kubernetes stops a server; whatever is left after 20 s is killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        family = self.family()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _, alive = psutil.wait_procs(family, timeout=1)
        for leftover in alive:
            leftover.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def moto_server(log_dir: Path, name: str = "moto", **env: str) -> Process:
    """moto's S3 server on a free loopback port (``env``: e.g. INITIAL_NO_AUTH_ACTION_COUNT,
    after which moto checks credentials as AWS does)."""
    port = free_port()
    # `python -m`, not the console scripts: they need not be on PATH (a --target install has none)
    return Process(name, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                   clean_env(**env), log_dir, f"http://127.0.0.1:{port}")


def bento_server(name: str, log_dir: Path, env: dict[str, str], project: Path, target: str = "service.py") -> Process:
    """``bentoml serve`` of ``target`` in the ``project`` folder, with a BENTOML_HOME of its own unless
    ``env`` names one: servers sharing one also share (and wipe) BentoML's Prometheus files."""
    port = free_port()
    home = log_dir / f"{name}-bentoml-home"
    argv = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    return Process(name, argv, clean_env(**{"BENTOML_HOME": str(home), **env}), log_dir, f"http://127.0.0.1:{port}",
                   cwd=project)


def prepare_mask_bucket(s3, bucket: str, prefix: str, *others: str) -> None:
    """``bucket`` with docs/CONFIGURATION.md's public-read policy on ``prefix`` (anyone may GET a mask, nothing
    else), and the plain buckets ``others``; safe to repeat (moto keeps buckets in memory only)."""
    from sam2_api.api.storage import public_read_policy

    existing = {found["Name"] for found in s3.list_buckets()["Buckets"]}
    for name in {bucket, *others} - existing:
        s3.create_bucket(Bucket=name)
    s3.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket, prefix))


@contextmanager
def served_with_s3(log_dir: Path, name: str, bucket: str, prefix: str, credentials: dict[str, str],
                   env: dict[str, str], project: Path, timeout: float = 240) -> Iterator[Process]:
    """moto's S3 server with ``bucket`` (public-read on ``prefix``) and `bentoml serve` storing masks
    there with ``credentials`` and ``env``; both stopped on the way out."""
    import boto3

    s3_server = moto_server(log_dir, name=f"{name}-s3")
    s3_server.start("/moto-api/")
    server = None
    try:
        s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          **{key.lower(): value for key, value in credentials.items()})
        prepare_mask_bucket(s3, bucket, prefix)
        server = bento_server(name, log_dir, project=project, env={
            "S3_BUCKET_NAME_STAGING": bucket, "S3_ENDPOINT_URL": s3_server.url, "AWS_REGION": "us-east-1",
            **credentials, **env,
        })
        server.start("/readyz", timeout=timeout)
        yield server
    finally:
        if server:
            server.stop()
        s3_server.stop()
