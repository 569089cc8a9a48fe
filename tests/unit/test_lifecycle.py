"""/readyz always answers within its bound; a worker leaves within its grace after SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from sam2_api.server.lifecycle import BoundedReadiness


def probe(app, path: str = "/readyz", bound_s: float = 0.3) -> tuple[int, bytes, float]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    started = time.monotonic()
    asyncio.run(BoundedReadiness(app, bound_s=bound_s)({"type": "http", "path": path, "headers": []}, receive, send))
    return sent[0]["status"], sent[1]["body"], time.monotonic() - started


async def answers(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"\n"})


async def hangs(scope, receive, send):  # the model service loading: its socket accepts, nobody answers
    await asyncio.sleep(60)


async def raises(scope, receive, send):  # BentoML's probe when the model service's socket refuses
    raise ConnectionRefusedError(111, "Connection refused")


async def says_nothing(scope, receive, send):
    return None


def test_a_ready_service_answers_as_bentoml_does():
    assert probe(answers)[:2] == (200, b"\n")


@pytest.mark.parametrize("app, reason", [(hangs, "did not say it was ready within 0.3 s"),
                                         (raises, "not reachable (ConnectionRefusedError)"),
                                         (says_nothing, "no answer yet")], ids=["hangs", "raises", "silent"])
def test_a_probe_that_hangs_or_fails_is_a_503_within_the_bound(app, reason):
    status, body, seconds = probe(app)
    assert status == 503 and reason in json.loads(body)["error"]
    assert seconds < 5  # the bound is 0.3 s; hangs would take 60 s


def test_other_paths_are_not_bounded():
    sent = []

    async def send(message):
        sent.append(message)

    async def slow(scope, receive, send):
        await asyncio.sleep(0.5)
        await answers(scope, receive, send)

    asyncio.run(BoundedReadiness(slow, bound_s=0.1)({"type": "http", "path": "/segment"}, None, send))
    assert sent[0]["status"] == 200


WORKER = """
import signal, sys, threading, time
from sam2_api.server.lifecycle import exit_after_grace
signal.signal(signal.SIGTERM, lambda *_: print("uvicorn's handler ran", flush=True))  # as uvicorn's, set first
exit_after_grace(float(sys.argv[1]))
print("ready", flush=True)
threading.Event().wait()  # a request that never finishes
"""


def test_a_worker_busy_for_ever_exits_its_grace_after_sigterm():
    worker = subprocess.Popen([sys.executable, "-c", WORKER, "1.0"], stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline() == "ready\n"
    started = time.monotonic()
    worker.terminate()
    assert worker.wait(timeout=20) == 0
    assert 1.0 <= time.monotonic() - started < 10
    assert worker.stdout.read() == "uvicorn's handler ran\n"  # the server's own handler still runs first


JOB = """
import sys
from sam2_api import metrics
metrics.VIDEO_JOBS.labels(state="running").inc()
print("counted", flush=True)
sys.stdin.read()
"""


def running_jobs(directory) -> float:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("sam2_video_jobs", {"state": "running"}) or 0.0


def test_the_jobs_of_a_worker_killed_with_sigkill_stop_being_counted(tmp_path):
    from sam2_api.metrics import forget_dead_processes

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    alive = subprocess.Popen([sys.executable, "-c", JOB], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, "-c", JOB], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout.readline() == killed.stdout.readline() == "counted\n"
        killed.kill()  # SIGKILL: prometheus_client's mark_process_dead never runs
        killed.wait()
        assert running_jobs(tmp_path) == 2
        assert forget_dead_processes(tmp_path) == [killed.pid]
        assert running_jobs(tmp_path) == 1  # the live worker's job stays counted
    finally:
        alive.kill()
        alive.wait()
