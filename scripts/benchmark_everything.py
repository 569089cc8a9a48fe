"""Benchmark POST /segment_everything against Meta's SAM2AutomaticMaskGenerator, in one run, as ratios.

Times, on the same image, weights and parameters:

- Meta's generator in this process, as its README uses it (``generate(image)``: the encoder, the
  point batches, binary masks out), under bf16 autocast on CUDA as Meta's notebook runs it;
- the model service's part of the route in this process (``Engine.everything``: the encoder through
  the embedding cache, Meta's generator code over it, RLE out), for a new image and for a repeat;
- the whole route over HTTP: ``bentoml serve service.py`` with a local S3 server (moto), every
  object's PNG and the label map uploaded; a new image (new bytes) and a repeat of the same bytes.

It checks that our objects equal the generator's, measures the peak memory of one of our requests
against the bound the service applies, and writes docs/PERFORMANCE-everything.md.

    .venv/bin/python scripts/benchmark_everything.py                  # random-init hiera-tiny, CPU, 8x8 points
    .venv/bin/python scripts/benchmark_everything.py --device cuda --checkpoint sam2.1_hiera_large.pt \\
        --model facebook/sam2.1-hiera-large --points-per-side 32

Random-init weights time like real ones in the encoder and decoder (same shapes, same work), but
not after it: their masks are noisy speckles, so the generator's thresholds drop them all, and
with the thresholds lowered ("keep-all") every mask survives with long run-length encodings. The
two configurations bracket real weights' work; only real weights give the real figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: E402
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES  # noqa: E402

from sam2_api.cache import EmbeddingCache  # noqa: E402
from sam2_api.device import DeviceThread  # noqa: E402
from sam2_api.engine import Engine  # noqa: E402
from sam2_api.everything_protocol import EverythingLimits, EverythingParams  # noqa: E402
from sam2_api.localdev import bento_server, moto_server, prepare_mask_bucket  # noqa: E402
from sam2_api.maskformats import from_coco_rle  # noqa: E402
from sam2_api.model import WeightsSource, load_sam2  # noqa: E402
from sam2_api.protocol import RawImage  # noqa: E402
from sam2_api.segmenter import Segmenter  # noqa: E402

BUCKET, PREFIX = "bench-everything", "sam2-api-masks/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
CONFIGS = {
    "defaults": {},
    "keep-all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
}
OUTPUT = REPO / "docs" / "PERFORMANCE-everything.md"


def variants(base: np.ndarray, count: int, seed: int) -> list[tuple[np.ndarray, bytes]]:
    """``count`` copies of ``base``, each with one pixel changed (new bytes for the cache, the same
    work), with their PNG bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pixels = base.copy()
        pixels[rng.integers(base.shape[0]), rng.integers(base.shape[1]), 0] ^= 1
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        out.append((pixels, buffer.getvalue()))
    return out


class PeakMemory:
    """The peak of this process's memory above its level at the start: CUDA's allocator on CUDA,
    the resident set (sampled every 0.5 ms) on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss()
            self._running = True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._running = False
            self._sampler.join()
        self.used = self.peak - self.base


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def server_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            stages[name] = float(duration) / 1000
    return stages


def same_objects(ours: list, width: int, height: int, meta: list[dict]) -> bool:
    """Our objects (EverythingObject or the route's JSON with ``rle``) against the generator's records."""
    meta = sorted(meta, key=lambda record: -record["area"])[: len(ours)]
    if len(ours) != len(meta):
        return False
    for found, record in zip(ours, meta):
        counts = found.counts if hasattr(found, "counts") else found["rle"]["counts"]
        score = found.predicted_iou if hasattr(found, "predicted_iou") else found["predicted_iou"]
        if score != record["predicted_iou"] or not np.array_equal(from_coco_rle(counts, height, width),
                                                                    record["segmentation"]):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt")
    parser.add_argument("--model", default="facebook/sam2.1-hiera-tiny", choices=sorted(HF_MODEL_ID_TO_FILENAMES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "chelsea.png")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--configs", default="defaults,keep-all", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each kind (the median is reported)")
    parser.add_argument("--no-server", action="store_true", help="skip the HTTP route (in-process figures only)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    device = torch.device(args.device)
    config_name, _ = HF_MODEL_ID_TO_FILENAMES[args.model]
    model = load_sam2(WeightsSource(config_name, args.checkpoint, "benchmark"), device)
    segmenter = Segmenter(model)
    engine = Engine(DeviceThread(segmenter), EmbeddingCache(64, 2**34), EverythingLimits(deadline_s=3600, max_points=10**6))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    base = np.array(Image.open(args.image).convert("RGB"))
    height, width = base.shape[:2]
    results = []
    for number, name in enumerate(args.configs.split(",")):
        images = variants(base, args.repeats + 1, seed=number)
        params = dict(points_per_side=args.points_per_side, **CONFIGS[name])
        print(f"[{name}] warming up", file=sys.stderr)
        generator = SAM2AutomaticMaskGenerator(model, **params)
        with autocast:
            generator.generate(images[0][0])
        engine.everything(f"warm-{name}", EverythingParams(**params), RawImage.of(images[0][0]))

        meta_times, ours_cold, ours_warm, equal = [], [], [], []
        for index in range(args.repeats):
            pixels = images[1 + index][0]
            with autocast:
                seconds, records = timed(lambda: generator.generate(pixels))
            meta_times.append(seconds)
            key = f"{name}-{index}"
            seconds, reply = timed(lambda: engine.everything(key, EverythingParams(**params), RawImage.of(pixels)))
            assert reply.failure is None, reply.failure
            ours_cold.append(seconds)
            equal.append(same_objects(reply.objects, width, height, records))
            with PeakMemory(device) as memory:  # the point batches alone: the embedding is cached
                seconds, again = timed(lambda: engine.everything(key, EverythingParams(**params)))
            assert again.cached
            ours_warm.append(seconds)
            print(f"[{name}] generator {meta_times[-1]:.2f} s, ours {ours_cold[-1]:.2f} s, "
                  f"repeat {ours_warm[-1]:.2f} s, {len(records)} objects", file=sys.stderr)
        plan = EverythingParams(**params).plan(width, height, EverythingLimits())
        results.append({
            "config": name, "params": params, "objects": len(records), "returned": len(reply.objects),
            "meta": statistics.median(meta_times), "ours": statistics.median(ours_cold),
            "ours_repeat": statistics.median(ours_warm), "equal": all(equal), "stages": reply.seconds,
            "memory": memory.used, "memory_bound": plan.batch_bytes, "points_per_batch": plan.points_per_batch,
        })

    served = {} if args.no_server else serve_and_time(args, base, results)
    write_report(args, width, height, results, served)


def serve_and_time(args, base: np.ndarray, results: list[dict]) -> dict:
    """Median wall times of the route for each configuration: new bytes (cold) and the same again."""
    out = {}
    with tempfile.TemporaryDirectory() as logs:
        s3_server = moto_server(Path(logs))
        s3_server.start("/moto-api/")
        try:
            s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1", **{
                "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]})
            prepare_mask_bucket(s3, BUCKET, PREFIX)
            env = {"SAM2_CHECKPOINT": str(args.checkpoint), "SAM2_MODEL": args.model, "SAM2_DEVICE": args.device,
                   "S3_BUCKET_NAME_STAGING": BUCKET, "S3_ENDPOINT_URL": s3_server.url,
                   "SAM2_EVERYTHING_DEADLINE_S": "290", "SAM2_EVERYTHING_MAX_POINTS": "1000000", **CREDENTIALS}
            server = bento_server("bench-everything", Path(logs), env, REPO)
            print("starting bentoml serve", file=sys.stderr)
            server.start("/readyz", timeout=600)
            try:
                with httpx.Client(base_url=server.url, timeout=600) as client:
                    for number, result in enumerate(results):
                        images = variants(base, args.repeats + 1, seed=100 + number)  # bytes the server has not seen
                        fields = {name: json.dumps(value) for name, value in result["params"].items()}
                        fields["formats"] = json.dumps(["rle"])

                        def post(data: bytes) -> tuple[float, httpx.Response]:
                            seconds, response = timed(lambda: client.post(
                                "/segment_everything", data=fields, files={"image": ("image.png", data)}))
                            response.raise_for_status()
                            return seconds, response

                        post(images[0][1])  # warm-up
                        cold, warm, stages = [], [], []
                        for pixels, data in images[1:1 + args.repeats]:
                            seconds, response = post(data)
                            assert response.headers["X-Embedding-Cache"] == "miss"
                            cold.append(seconds)
                            stages.append(server_timing(response.headers["Server-Timing"]))
                            seconds, again = post(data)
                            assert again.headers["X-Embedding-Cache"] == "hit"
                            warm.append(seconds)
                        out[result["config"]] = {"cold": statistics.median(cold), "repeat": statistics.median(warm),
                                                 "stages": stages[-1], "objects": len(response.json()["objects"])}
                        print(f"[{result['config']}] route {out[result['config']]['cold']:.2f} s, "
                              f"repeat {out[result['config']]['repeat']:.2f} s", file=sys.stderr)
            finally:
                server.stop()
        finally:
            s3_server.stop()
    return out


def write_report(args, width: int, height: int, results: list[dict], served: dict) -> None:
    if args.device == "cuda":
        hardware = torch.cuda.get_device_name(0)
    else:
        hardware = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    random_weights = "RANDOM-TEST-WEIGHTS" in args.checkpoint.name
    lines = [
        "# Segment everything: performance",
        "",
        "Written by `scripts/benchmark_everything.py` "
        f"(`--device {args.device} --model {args.model} --points-per-side {args.points_per_side}`), on "
        f"{hardware}, torch {torch.__version__}; image `{args.image.relative_to(REPO) if args.image.is_relative_to(REPO) else args.image}` "
        f"({width}×{height}); median of {args.repeats} runs each.",
        "",
        "- **generator**: Meta's `SAM2AutomaticMaskGenerator.generate(image)` in-process (encoder, point "
        "batches, binary masks), the baseline;",
        "- **ours, model side**: `Engine.everything` in-process, new image (encoder included) and repeat (cached "
        "embedding): what the model service does for one request;",
        "- **route**: `POST /segment_everything` over HTTP to `bentoml serve service.py` with a local S3 server "
        "(moto): upload, decode, the model service, the label map, every object's PNG and their uploads.",
        "",
    ]
    if random_weights:
        lines += [
            "These figures come from the **random test weights**: the encoder and decoder cost what real ones do, "
            "but their speckled masks either all fail the default thresholds (`defaults`: the decoder and filters "
            "only, no object) or, with the thresholds lowered (`keep-all`), all survive with very long run-length "
            "encodings, which makes Meta's Python RLE code and our uploads far costlier than real masks would. "
            "Real weights fall between the two; the GPU figures for hiera-large come from a run with real weights.",
            "",
        ]
    lines += [
        "| config | objects | generator | ours, model side | ratio | ours, repeat | ratio | route | ratio | "
        "route, repeat | ratio | objects equal the generator's |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        meta = result["meta"]
        route = served.get(result["config"])
        route_cells = (f"{route['cold']:.2f} s | {route['cold'] / meta:.2f}× | {route['repeat']:.2f} s | "
                       f"{route['repeat'] / meta:.2f}×" if route else "– | – | – | –")
        lines.append(
            f"| {result['config']} | {result['objects']} | {meta:.2f} s | {result['ours']:.2f} s | "
            f"{result['ours'] / meta:.2f}× | {result['ours_repeat']:.2f} s | {result['ours_repeat'] / meta:.2f}× | "
            f"{route_cells} | {'yes' if result['equal'] else 'NO'} |"
        )
    lines += ["", "Parameters: " + "; ".join(f"`{r['config']}`: `{json.dumps(r['params'])}`" for r in results) + ".", ""]
    lines += ["Where the model side's time goes (one new image), and the route's (Server-Timing):", ""]
    for result in results:
        stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result["stages"].items() if name != "queue")
        lines.append(f"- `{result['config']}`, model side: {stages}")
        if result["config"] in served:
            stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in served[result["config"]]["stages"].items())
            lines.append(f"- `{result['config']}`, route: {stages}")
    lines += [
        "",
        "## Memory",
        "",
        "The service bounds one batch of points (`SAM2_EVERYTHING_MAX_BATCH_BYTES`, 8 GiB by default) with an "
        "estimate of 32 MiB per point (the mask decoder's activations) plus 12 bytes per image pixel per candidate "
        "mask (full-size float logits and their filtered copies), lowering `points_per_batch` to fit. Measured "
        f"({'CUDA allocator peak' if args.device == 'cuda' else 'resident-set peak, sampled'} of a repeat request: "
        "the point batches, the encoder skipped):",
        "",
        "| config | points per batch | estimate for one batch | measured peak |",
        "|---|---|---|---|",
    ]
    for result in results:
        lines.append(f"| {result['config']} | {result['points_per_batch']} | {result['memory_bound'] / 2**20:.0f} MiB | "
                     f"{result['memory'] / 2**20:.0f} MiB |")
    lines += [""]
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
