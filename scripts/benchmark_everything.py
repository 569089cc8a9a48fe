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
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from _shared import REPO, png_variants, processor, server_timing  # first: the repository's root on sys.path
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

from sam2_api.maskformats import from_coco_rle
from sam2_api.messages import EverythingLimits, EverythingParams, RawImage
from sam2_api.model.device_thread import DeviceThread
from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.engine import Engine
from sam2_api.model.segmenter import Segmenter
from sam2_api.model.weights import WeightsSource, load_sam2
from tests.support.localdev import served_with_s3

BUCKET, PREFIX = "bench-everything", "sam2-api-masks/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
CONFIGS = {
    "defaults": {},
    "keep-all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
}
OUTPUT = REPO / "docs" / "PERFORMANCE-everything.md"


def variants(base: np.ndarray, count: int, seed: int) -> list[tuple[np.ndarray, bytes]]:
    """``count`` copies of ``base``, each with one pixel changed (new bytes for the cache, the same
    work), with their PNG bytes: the shared variants, decoded back (PNG is lossless)."""
    return [(np.array(Image.open(io.BytesIO(png))), png) for png in png_variants(base, count, seed)]


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
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per configuration (medians reported)")
    parser.add_argument("--no-server", action="store_true", help="skip the HTTP route (in-process figures only)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    device = torch.device(args.device)
    config_name, _ = HF_MODEL_ID_TO_FILENAMES[args.model]
    model = load_sam2(WeightsSource(config_name, args.checkpoint, "benchmark"), device)
    engine = Engine(DeviceThread(Segmenter(model)), EmbeddingCache(64, 2**34),
                    everything_limits=EverythingLimits(deadline_s=3600, max_points=10**6))
    base = np.array(Image.open(args.image).convert("RGB"))
    with contextlib.ExitStack() as stack:
        route = None
        if not args.no_server:
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            env = {"SAM2_CHECKPOINT": str(args.checkpoint), "SAM2_MODEL": args.model, "SAM2_DEVICE": args.device,
                   "SAM2_EVERYTHING_DEADLINE_S": "290", "SAM2_EVERYTHING_MAX_POINTS": "1000000"}
            print("starting bentoml serve", file=sys.stderr)
            server = stack.enter_context(served_with_s3(logs, "bench-everything", BUCKET, PREFIX, CREDENTIALS, env,
                                                        REPO, timeout=600))
            route = stack.enter_context(httpx.Client(base_url=server.url, timeout=600))
        results = [measure(args, name, number, model, engine, route, base)
                   for number, name in enumerate(args.configs.split(","))]
    write_report(args, base.shape[1], base.shape[0], results)


def measure(args, name: str, number: int, model, engine: Engine, route: httpx.Client | None,
            base: np.ndarray) -> dict:
    """One configuration, in rounds: the generator, then ours in-process (new image, repeat), then
    the route (new bytes, repeat), back to back, so that each ratio compares runs made under the
    same load; the medians of times and of ratios."""
    height, width = base.shape[:2]
    params = dict(points_per_side=args.points_per_side, **CONFIGS[name])
    fields = {key: json.dumps(value) for key, value in params.items()} | {"formats": json.dumps(["rle"])}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else contextlib.nullcontext()
    generator = SAM2AutomaticMaskGenerator(model, **params)

    def post(data: bytes, cache: str) -> tuple[float, httpx.Response]:
        seconds, response = timed(lambda: route.post("/segment_everything", data=fields,
                                                      files={"image": ("image.png", data)}))
        response.raise_for_status()
        assert response.headers["X-Embedding-Cache"] == cache
        return seconds, response

    images = variants(base, args.repeats + 1, seed=number)  # new bytes and pixels each round, the same work
    print(f"[{name}] warming up", file=sys.stderr)
    with autocast:
        generator.generate(images[0][0])
    engine.everything(f"warm-{name}", EverythingParams(**params), RawImage(pixels=images[0][0]))
    if route:
        post(images[0][1], "miss")
    rounds = []
    for index, (pixels, data) in enumerate(images[1:]):
        times = {}

        def run_generator() -> list[dict]:
            with autocast:
                times["generator"], found = timed(lambda: generator.generate(pixels))
            return found

        # The generator runs first in even rounds and last in odd ones, so that neither side always
        # follows the same work (a warm allocator, caches, or the other's threads winding down).
        records = run_generator() if index % 2 == 0 else None
        key = f"{name}-{index}"
        times["ours"], reply = timed(lambda: engine.everything(key, EverythingParams(**params), RawImage(pixels=pixels)))
        assert reply.failure is None, reply.failure
        with PeakMemory(torch.device(args.device)) as memory:  # the point batches alone: the embedding is cached
            times["ours, repeat"], again = timed(lambda: engine.everything(key, EverythingParams(**params)))
        assert again.cached
        route_stages, served = {}, []
        if route:
            times["route"], response = post(data, "miss")
            route_stages, served = server_timing(response.headers["Server-Timing"]), response.json()["objects"]
            times["route, repeat"], _ = post(data, "hit")
        if records is None:
            records = run_generator()
        equal = same_objects(reply.objects, width, height, records) and (
            not route or same_objects(served, width, height, records))
        rounds.append({"times": times, "equal": equal, "memory": memory.used, "stages": reply.seconds,
                       "route_stages": route_stages, "objects": len(records)})
        print(f"[{name}] " + ", ".join(f"{kind} {seconds:.2f} s" for kind, seconds in times.items())
              + f"; {len(records)} objects", file=sys.stderr)
    plan = EverythingParams(**params).plan(width, height, EverythingLimits())
    kinds = list(rounds[0]["times"])
    return {
        "config": name, "params": params, "objects": rounds[-1]["objects"],
        "times": {kind: statistics.median(r["times"][kind] for r in rounds) for kind in kinds},
        "ratios": {kind: statistics.median(r["times"][kind] / r["times"]["generator"] for r in rounds)
                   for kind in kinds if kind != "generator"},
        "equal": all(r["equal"] for r in rounds), "stages": rounds[-1]["stages"],
        "route_stages": rounds[-1]["route_stages"], "memory": max(r["memory"] for r in rounds),
        "memory_bound": plan.batch_bytes, "points_per_batch": plan.points_per_batch,
    }


HEADER = """# Segment everything: performance

Written by `scripts/benchmark_everything.py`, one section per kind of device (a run replaces its own
and keeps the other). Each round times, on new pixels of the same image:

- **generator**: Meta's `SAM2AutomaticMaskGenerator.generate(image)` in-process (encoder, point
  batches, binary masks): the baseline;
- **ours**: `Engine.everything` in-process, for the new image (encoder included) and again (cached
  embedding): the model service's part of a request;
- **route**: `POST /segment_everything` over HTTP to `bentoml serve service.py` with a local S3
  server (moto): upload, decode, the model service, the label map, every object's PNG and the
  uploads, for new bytes and for the same bytes again (`X-Embedding-Cache: hit`).

Times are medians of the rounds; each ratio is the median of the rounds' ratios to the generator's
run of the same round (measured back to back, so that they share the machine's load). The model
work is Meta's generator code in both; ours runs it over the embedding cache, with the encoder's
resize on the device, and with two of its helpers (the run-length encoding of each batch's masks,
and the gathering of the batches' results) replaced by exact equivalents that skip its per-mask
Python and device syncs.
"""


def write_report(args, width: int, height: int, results: list[dict]) -> None:
    """Replaces this device's section of the report (``<!-- cpu -->`` … ``<!-- /cpu -->``)."""
    hardware = (torch.cuda.get_device_name(0) if args.device == "cuda"
                else f"{os.cpu_count()} CPU cores ({processor()})")
    image = args.image.relative_to(REPO) if args.image.is_relative_to(REPO) else args.image
    lines = [
        f"<!-- {args.device} -->",
        f"## {args.device.upper()}: {hardware}",
        "",
        f"`scripts/benchmark_everything.py --device {args.device} --model {args.model} --points-per-side "
        f"{args.points_per_side} --repeats {args.repeats}`; torch {torch.__version__}; image `{image}` "
        f"({width}×{height}).",
        "",
    ]
    if "RANDOM-TEST-WEIGHTS" in args.checkpoint.name:
        lines += [
            "From the **random test weights**: the encoder and decoder cost what real ones do, but their "
            "speckled masks either all fail the default thresholds (`defaults`: the decoder and filters only, no "
            "object) or, with the thresholds lowered (`keep-all`), all survive with very long run-length "
            "encodings, which makes the RLE work and the uploads far costlier than real masks would. Real weights "
            "fall between the two.",
            "",
        ]
    kinds = ["ours", "ours, repeat", "route", "route, repeat"]
    lines += [
        "| config | objects | generator | " + " | ".join(f"{kind} | ratio" for kind in kinds)
        + " | objects equal the generator's |",
        "|---|---|---|" + "---|---|" * len(kinds) + "---|",
    ]
    for result in results:
        cells = [f"{result['times'][kind]:.2f} s | {result['ratios'][kind]:.2f}×" if kind in result["times"]
                 else "– | –" for kind in kinds]
        lines.append(f"| {result['config']} | {result['objects']} | {result['times']['generator']:.2f} s | "
                     + " | ".join(cells) + f" | {'yes' if result['equal'] else 'NO'} |")
    lines += [
        "",
        "Parameters: " + "; ".join(f"`{r['config']}`: `{json.dumps(r['params'])}`" for r in results) + ".",
        "",
        "Where the time goes (the last round's new image; ours in-process, and the route's Server-Timing):",
        "",
    ]
    for result in results:
        for where, stages in (("ours", result["stages"]), ("route", result["route_stages"])):
            if stages:
                shown = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in stages.items()
                                  if stage not in ("queue", "read"))
                lines.append(f"- `{result['config']}`, {where}: {shown}")
    lines += [
        "",
        "Memory: the service bounds one batch of points (`SAM2_EVERYTHING_MAX_BATCH_BYTES`, 8 GiB by default) "
        "with an estimate of 32 MiB per point (the mask decoder's activations) plus 12 bytes per image pixel per "
        "candidate mask (full-size float logits and their filtered copies), lowering `points_per_batch` to fit. "
        f"Measured ({'CUDA allocator peak' if args.device == 'cuda' else 'resident-set peak, sampled every 0.5 ms'}"
        " of the repeat request: the point batches alone, the encoder skipped):",
        "",
        "| config | points per batch | estimate for one batch | measured peak |",
        "|---|---|---|---|",
    ]
    for result in results:
        lines.append(f"| {result['config']} | {result['points_per_batch']} | {result['memory_bound'] / 2**20:.0f} MiB | "
                     f"{result['memory'] / 2**20:.0f} MiB |")
    lines += [f"<!-- /{args.device} -->"]
    section = "\n".join(lines)
    old = args.output.read_text() if args.output.exists() else HEADER
    start, end = old.find(f"<!-- {args.device} -->"), old.find(f"<!-- /{args.device} -->")
    if start >= 0 and end > start:
        text = old[:start] + section + old[end + len(f"<!-- /{args.device} -->"):]
    else:
        text = old.rstrip("\n") + "\n\n" + section + "\n"
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)

if __name__ == "__main__":
    main()
