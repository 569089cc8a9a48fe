"""Start and stop of `bentoml serve`, on a server of this module's own (it is killed and stopped here):
/readyz answers within seconds while the model loads or restarts, a model worker killed during a
clip is a 503 with the jobs' gauge back at 0, SIGTERM ends every process within 10 s, and two
servers sharing one BENTOML_HOME leave each other's tasks and metrics alone."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import psutil
import pytest

from tests.support.localdev import bento_server
from tests.clips import encode, moving_shapes
from tests.conftest import REPO
from tests.integration.conftest import ACCESS_KEY, BUCKET, SECRET_KEY, VIDEO_LIMITS
from tests.integration.test_segment_api import post
from tests.integration.test_track_api import result, status, submit, wait_for

READY_WITHIN_S = 5.0  # what a probe may wait (the middleware's bound is 3 s)
GONE_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def served(s3, s3_server, checkpoint, logs):
    server = bento_server("start-stop", logs, project=REPO, env={
        "SAM2_CHECKPOINT": str(checkpoint), "S3_BUCKET_NAME_STAGING": BUCKET, "S3_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
        **VIDEO_LIMITS,
    })
    yield server
    server.stop()


def probe(server) -> tuple[float, int | str]:
    """One /readyz answer: the seconds it took, and its status or the error."""
    started = time.monotonic()
    try:
        answer = httpx.get(server.url + "/readyz", timeout=30).status_code
    except httpx.TransportError as exc:
        answer = type(exc).__name__
    return time.monotonic() - started, answer


def probe_until_ready(server, timeout: float = 240) -> list[tuple[float, int | str]]:
    """Every /readyz answer (seconds it took, status or the error) until one is 200."""
    answers, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers.append(probe(server))
        answer = answers[-1][1]
        if answer == 200:
            return answers
        assert server.proc.poll() is None, server.log()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s: {answers[-5:]}")


def answered(answers) -> list[tuple[float, int]]:
    """The probes the server answered (before its port is bound, connections are refused)."""
    return [(seconds, status) for seconds, status in answers if isinstance(status, int)]


def test_readyz_answers_within_seconds_while_the_model_loads(served):
    served.launch()
    answers = answered(probe_until_ready(served))
    assert answers[-1][1] == 200 and all(status in (200, 503) for _, status in answers), answers
    # The first answer waits in the port's backlog until the API worker has started (seconds); from
    # then on every answer comes within the bound, "not ready" until the model service is. (How many
    # 503s come before the 200 depends on how fast the test checkpoint loads: not asserted.)
    slow = [(seconds, status) for seconds, status in answers[1:] if seconds > READY_WITHIN_S]
    assert not slow, f"/readyz took longer than {READY_WITHIN_S} s: {slow} (all: {answers})"

    # A model service that does not answer at all (as while its event loop is busy loading weights):
    # stopped with SIGSTOP, so the test does not depend on how long loading takes.
    worker = model_worker(served)
    worker.suspend()
    try:
        stalled = [probe(served) for _ in range(3)]
    finally:
        worker.resume()
    assert all(status == 503 and seconds <= READY_WITHIN_S for seconds, status in stalled), stalled
    assert answered(probe_until_ready(served, timeout=60))[-1][1] == 200
    assert post(served, (REPO / "tests/data/chelsea.png").read_bytes(), points=[[225, 150]]).status_code == 200


def running(server):
    """``server``, started if an earlier test of this module did not (run alone, with -k)."""
    if server.proc is None:
        server.start("/readyz")
    return server


def model_worker(server) -> psutil.Process:
    return next(p for p in server.family() if "SAM2Model" in " ".join(p.cmdline()))


def running_jobs(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    found = re.search(r'^sam2_video_jobs\{state="running"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_model_worker_killed_during_a_clip_is_a_503_and_everything_recovers(served):
    served = running(served)
    clip = encode(moving_shapes(24, 64, 48))
    task_id = submit(served, clip, objects=[{"frame_index": 0, "points": [[20, 20]]}])
    wait_for(served, task_id, until=("in_progress",), timeout=120)
    deadline = time.monotonic() + 240
    while ((status(served, task_id).get("progress") or {}).get("frames_done") or 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert running_jobs(served) == 1

    worker = model_worker(served)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    ended = wait_for(served, task_id, timeout=60)[-1]
    assert ended["status"] == "failed", ended
    response = result(served, task_id)
    assert response.status_code == 503, response.text  # was a 500: aiohttp's ClientPayloadError
    assert "model service" in response.json()["error"]

    answers = probe_until_ready(served)  # while circus starts a new model worker
    assert all(seconds <= READY_WITHIN_S for seconds, _ in answered(answers)), answers
    assert model_worker(served).pid != worker.pid
    assert running_jobs(served) == 0  # the killed worker's job is no longer counted


def requests_counted(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return sum(float(value) for value in re.findall(r'^sam2_stage_seconds_count\{stage="total"\} (\S+)$', text, re.M))


def test_a_second_server_on_the_same_bentoml_home_leaves_this_ones_tasks_and_metrics(served, checkpoint, logs):
    served = running(served)
    task_id = submit(served, encode(moving_shapes(2, 64, 48)), objects=[{"frame_index": 0, "points": [[20, 20]]}])
    assert wait_for(served, task_id)[-1]["status"] == "completed"
    assert post(served, (REPO / "tests/data/chelsea.png").read_bytes(), points=[[225, 150]]).status_code == 200
    counted = requests_counted(served)
    assert counted >= 1

    beside = bento_server("start-stop-beside", logs, project=REPO, env={
        "SAM2_CHECKPOINT": str(checkpoint), "BENTOML_HOME": served.env["BENTOML_HOME"]})
    beside.start("/readyz")
    try:
        assert status(served, task_id)["status"] == "completed"  # was 404: BentoML wiped its task store
        assert result(served, task_id).status_code == 200
        assert requests_counted(served) == counted  # was 0: BentoML wiped its Prometheus files
    finally:
        beside.stop()


def test_sigterm_ends_every_process_within_seconds_even_with_work_in_flight(served):
    served = running(served)
    clip = encode(moving_shapes(24, 64, 48))
    task_id = submit(served, clip, objects=[{"frame_index": 0, "points": [[20, 20]]}])
    wait_for(served, task_id, until=("in_progress",), timeout=120)
    family = served.family()
    assert len(family) >= 3  # the server, its API worker(s) and its model worker
    os.kill(served.proc.pid, signal.SIGTERM)  # to the server process alone, as Kubernetes or Ctrl+C does
    started = time.monotonic()
    ended = {}
    _, alive = psutil.wait_procs(family, timeout=GONE_WITHIN_S,
                                 callback=lambda p: ended.setdefault(p.pid, round(time.monotonic() - started, 1)))
    assert not alive, f"still running {GONE_WITHIN_S} s after SIGTERM: " + \
        ", ".join(" ".join(p.cmdline()[-6:]) for p in alive) + f" (the others ended after {ended} s)"
