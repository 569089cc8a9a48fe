"""Prometheus metrics of our own, served with BentoML's built-in ones at ``/metrics``.

Locally both services' processes share BentoML's multiprocess metrics directory, so the API
service's ``/metrics`` shows the model service's stages too; deployed separately, each has its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil
from prometheus_client import Counter, Gauge, Histogram, multiprocess

STAGE_SECONDS = Histogram(
    "sam2_stage_seconds",
    "Time per request stage: body, fetch, image_decode, model_call (each call to the model service, "
    "from the API side), queue (waiting for the device), encoder, decoder, png, store, total",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
ENCODER_BATCH_SIZE = Histogram(
    "sam2_encoder_batch_size", "Images per encoder call", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
)
CACHE_HITS = Counter("sam2_embedding_cache_hits", "Requests served from a cached image embedding")
CACHE_MISSES = Counter("sam2_embedding_cache_misses", "Requests that had to run the image encoder")
CACHE_EVICTIONS = Counter("sam2_embedding_cache_evictions", "Embeddings evicted to stay within bounds")
UPLOAD_FAILURES = Counter(
    "sam2_mask_upload_failures", "Mask uploads that failed, by S3 error code or botocore error", ["reason"]
)
VIDEO_JOBS = Gauge(
    "sam2_video_jobs", "Tracking jobs on the model service: queued for the tracker, or running", ["state"],
    multiprocess_mode="livesum",
)
VIDEO_FRAMES = Counter("sam2_video_frames_tracked", "Frames tracked by the model service (all objects of a frame: 1)")


def forget_dead_processes(directory: Path) -> list[int]:
    """Drop the live gauges (``sam2_video_jobs``) of processes that died without saying so: a
    worker killed with SIGKILL never runs prometheus_client's ``mark_process_dead``, and its jobs
    would stay counted until the server restarts. Call it when a worker starts. The pids dropped."""
    dead = set()
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(re.fullmatch(r"gauge_live\w+?_(\d+)\.db", path.name).group(1))
        if not psutil.pid_exists(pid):
            dead.add(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return sorted(dead)
