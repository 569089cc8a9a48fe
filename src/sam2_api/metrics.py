"""Prometheus metrics of our own, served with BentoML's built-in ones at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_MODEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)

ENCODER_SECONDS = Histogram(
    "sam2_encoder_seconds", "SAM 2 image-encoder time per image (cache misses only)", buckets=_MODEL_BUCKETS
)
DECODER_SECONDS = Histogram(
    "sam2_decoder_seconds", "SAM 2 prompt-encoder + mask-decoder time per call", buckets=_MODEL_BUCKETS
)
CACHE_HITS = Counter("sam2_embedding_cache_hits", "Requests served from a cached image embedding")
CACHE_MISSES = Counter("sam2_embedding_cache_misses", "Requests that had to run the image encoder")
CACHE_EVICTIONS = Counter("sam2_embedding_cache_evictions", "Embeddings evicted to stay within bounds")
UPLOAD_SECONDS = Histogram(
    "sam2_mask_upload_seconds", "Time to store one mask on S3, failures included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
UPLOAD_FAILURES = Counter(
    "sam2_mask_upload_failures", "Mask uploads that failed, by S3 error code or botocore error", ["reason"]
)
