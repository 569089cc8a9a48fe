"""scripts/serve.sh as a new user runs it: its usage text, where it listens, and what it says when
its port or its S3 port is taken or its S3 endpoint is dead.

It runs from a copy of the project's layout whose scripts/setup.sh does nothing: the real one
reinstalls this package into the shared .venv, under the feet of every other test running from it.
Everything else is the real thing: serve.sh, scripts/local_s3.py (moto), `bentoml serve service.py`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import errno
import re
import time

import httpx
import psutil
import pytest

from tests.support.localdev import Process, clean_env, free_port
from tests.conftest import REPO


@pytest.fixture
def project(tmp_path):
    """A folder laid out like the project, for serve.sh to cd into; setup.sh does nothing."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for path in ("scripts/serve.sh", "service.py"):  # BentoML wants service.py itself in its working folder
        shutil.copy(REPO / path, root / path)
    (root / "scripts" / "setup.sh").write_text("# the project's .venv is set up already\n")
    for path in ("scripts/local_s3.py", ".venv", "tests"):  # tests: serve.sh's port checks are tests/support's
        (root / path).symlink_to(REPO / path)
    return root


def serve_beside_a_taken_port(project, variable: str, **env: str) -> tuple[int, subprocess.CompletedProcess, float]:
    """serve.sh with ``variable`` naming a port another socket listens on: that port, its result,
    and the seconds it took."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(["bash", str(project / "scripts" / "serve.sh")], capture_output=True, text=True,
                                env=clean_env(**{variable: str(port)}, **env), timeout=60)
    return port, result, time.monotonic() - started


def test_a_taken_local_s3_port_is_named_at_once_with_the_variable_that_moves_it(project):
    port, result, seconds = serve_beside_a_taken_port(project, "LOCAL_S3_PORT", PORT=str(free_port()))
    assert result.returncode != 0
    assert seconds < 15  # it was 20 s, then `S3_ENDPOINT_URL: unbound variable`
    assert result.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is already in use; start the local S3 server on another port "
        "(--port here, LOCAL_S3_PORT for scripts/serve.sh)"]


def test_usage_names_the_ports_and_the_variables_that_move_them(project):
    result = subprocess.run(["bash", str(project / "scripts" / "serve.sh"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: scripts/serve.sh")
    variables = re.findall(r"^  ([A-Z0-9_]+)  ", result.stdout, flags=re.MULTILINE)
    assert variables == ["PORT", "LOCAL_S3_PORT", "BENTOML_HOST"]


def test_a_taken_port_is_named_at_once_with_the_variable_that_moves_it(project):
    port, result, seconds = serve_beside_a_taken_port(project, "PORT")
    assert result.returncode == 1 and seconds < 15
    assert result.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is already in use; serve on another port with PORT (e.g. PORT=3001 scripts/serve.sh)"]


def test_with_4566_taken_and_no_local_s3_port_set_the_local_s3_server_takes_a_free_one(project, tmp_path):
    with socket.socket() as localstack:  # LocalStack's default port, as a new user's machine may have it taken
        try:
            localstack.bind(("127.0.0.1", 4566))
            localstack.listen()
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE  # taken already: all the same to serve.sh
        served = Process("serve-sh-4566-taken", ["bash", str(project / "scripts" / "serve.sh")], clean_env(
            PORT=str(free_port()), BENTOML_HOME=str(tmp_path / "bentoml-home")), tmp_path, "")
        served.launch()
        try:
            deadline = time.monotonic() + 60
            while "local S3 server: http://" not in served.log():
                assert served.proc.poll() is None and time.monotonic() < deadline, served.log()
                time.sleep(0.2)
            log = served.log()
            endpoint = log.split("local S3 server: ", 1)[1].split(",", 1)[0]
            s3_port = int(endpoint.rsplit(":", 1)[1])
            assert s3_port != 4566
            assert (f"127.0.0.1:4566 is taken (LocalStack's port?): the local S3 server takes {s3_port} instead "
                    "(LOCAL_S3_PORT chooses)") in log
            assert httpx.get(endpoint, timeout=10).status_code == 200  # moto answers there (its bucket list)
        finally:
            served.stop()


def test_it_listens_on_loopback_only_names_a_dead_s3_endpoint_and_bounds_header_time(project, checkpoint, tmp_path):
    port, dead = free_port(), f"http://127.0.0.1:{free_port()}"  # nobody listens there
    served = Process("serve-sh", ["bash", str(project / "scripts" / "serve.sh")], clean_env(
        SAM2_CHECKPOINT=str(checkpoint), BENTOML_HOME=str(tmp_path / "bentoml-home"), PORT=str(port),
        SAM2_API_WORKERS="2", S3_BUCKET_NAME_STAGING="masks", S3_ENDPOINT_URL=dead,
        AWS_ACCESS_KEY_ID="local-test-key", AWS_SECRET_ACCESS_KEY="local-test-secret-never-logged"),
        tmp_path, f"http://127.0.0.1:{port}")
    served.start("/readyz", timeout=300)  # it serves all the same
    try:
        listening = {conn.laddr.ip for conn in psutil.net_connections("tcp")
                     if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}
        assert listening == {"127.0.0.1"}  # was 0.0.0.0: every interface, with API keys off
        deadline = time.monotonic() + 60
        while "did not answer at start-up" not in served.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = served.log()
        assert f"the mask bucket s3://masks at {dead} did not answer at start-up: EndpointConnectionError" in log
        assert log.count("did not answer at start-up") == 1  # once, not per worker or per request
        assert "warning: listening on" not in log and "local-test-secret-never-logged" not in log
        # a request whose headers stop half-way: 408 and closed after SAM2_HEADER_TIMEOUT_S (10 s), not held
        with socket.create_connection(("127.0.0.1", port), timeout=60) as slow:
            slow.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Le")
            started, answer = time.monotonic(), b""
            while chunk := slow.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 ") and 9 < time.monotonic() - started < 40
    finally:
        served.stop()
