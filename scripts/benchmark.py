"""Benchmark the served API against Meta's SAM2ImagePredictor, in one run, as ratios.

Starts a local S3 server (moto) and `bentoml serve service.py` (both services), times Meta's
predictor in this process on the same images, weights and precision (bf16 autocast on CUDA, as the
service), and checks that the served masks are the predictor's. Each run writes its figures to
docs/benchmarks/<device>.json; docs/PERFORMANCE.md and its plot are then rendered from every such
file, so a CPU run and a GPU run stand side by side.

    .venv/bin/python scripts/benchmark.py                      # random-init hiera-tiny, CPU
    python scripts/benchmark.py --device cuda --model facebook/sam2.1-hiera-large \\
        --checkpoint checkpoints/sam2.1_hiera_large.RANDOM-TEST-WEIGHTS.pt        # on a GPU machine

Random-init weights time exactly like real ones (same shapes, same work).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import numpy as np
import psutil
import torch
from PIL import Image
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

from _shared import REPO, device_label, server_timing  # first: it puts the repository's root on sys.path
from _shared import png_variants as variants
from tests.support.localdev import Process, bento_server, moto_server, prepare_mask_bucket

BUCKET, PREFIX = "bench-masks", "sam2-api-masks/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
MODEL_STAGES = ("queue", "encoder", "decoder")  # what the model service's device thread does


def clicks(width: int, height: int, count: int, seed: int) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    return [[[float(rng.uniform(0, width)), float(rng.uniform(0, height))]] for _ in range(count)]


def stages(response: httpx.Response) -> dict[str, float]:
    """The Server-Timing header, in seconds per stage."""
    return server_timing(response.headers.get("server-timing", ""))


class Client:
    def __init__(self, server: Process):
        self.url = server.url + "/segment"
        self.http = httpx.Client(timeout=600)

    def segment(self, data: bytes, points, **fields) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        form = {name: json.dumps(value) if not isinstance(value, str) else value
                for name, value in {"points": points, **fields}.items()}
        response = self.http.post(self.url, files={"image": ("i.png", data)}, data=form)
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or response.json()["mask_url"] is None:
            raise RuntimeError(f"request failed: {response.status_code} {response.text}")
        return elapsed, response

    def mask(self, response: httpx.Response) -> np.ndarray:
        return np.array(Image.open(io.BytesIO(self.http.get(response.json()["mask_url"]).content))) == 255


class RssSampler:
    """Peak and current RSS of a process tree (the BentoML server and its workers)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def current(self) -> int:
        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.current())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def concurrent_run(server: Process, images: list[bytes], points, concurrency: int) -> tuple[float, list[float]]:
    """Send every image once from ``concurrency`` clients; (wall seconds, per-request latencies)."""
    clients = [Client(server) for _ in range(concurrency)]
    latencies: list[float] = []

    def work(index: int) -> None:
        elapsed, _ = clients[index % concurrency].segment(images[index], points[index])
        latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(work, range(len(images))))
    return time.perf_counter() - started, latencies


def mean_stages(timings: list[dict[str, float]]) -> dict[str, float]:
    names = {name for timing in timings for name in timing}
    return {name: statistics.mean(t.get(name, 0.0) for t in timings) for name in sorted(names)}


def png_encoding_table(mask: np.ndarray) -> list[tuple[str, float, int]]:
    rows = []
    for label, image, level in [
        ("8-bit L, zlib 1 (chosen)", Image.fromarray(mask.astype(np.uint8) * 255, "L"), 1),
        ("8-bit L, zlib 6 (Pillow default)", Image.fromarray(mask.astype(np.uint8) * 255, "L"), 6),
        ("1-bit, zlib 1", Image.fromarray(mask), 1),
    ]:
        times = []
        for _ in range(5):
            buffer = io.BytesIO()
            started = time.perf_counter()
            image.save(buffer, format="PNG", compress_level=level)
            times.append(time.perf_counter() - started)
        rows.append((label, statistics.median(times) * 1000, len(buffer.getvalue())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt")
    parser.add_argument("--model", default="facebook/sam2.1-hiera-tiny")
    parser.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "rocket.jpg")
    parser.add_argument("--size", default="1280x720", help="WxH the image is resized to")
    parser.add_argument("--cold", type=int, default=8, help="new images timed raw and served, alternately")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--rss-requests", type=int, default=300)
    parser.add_argument("--chain-sessions", type=int, default=3, help="five-click chained sessions, each on a new image")
    parser.add_argument("--big", type=int, default=3, help="new 3840×2160 images served")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-batching", action="store_true", help="no run with SAM2_ENCODER_BATCH=4")
    parser.add_argument("--skip-uncached", action="store_true", help="no run with the cache off")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where the report and results go")
    args = parser.parse_args()

    width, height = map(int, args.size.split("x"))
    source = Image.open(args.image).convert("RGB")
    base = np.array(source.resize((width, height), Image.Resampling.BICUBIC))
    big = np.array(source.resize((3840, 2160), Image.Resampling.BICUBIC))
    levels = [int(c) for c in args.concurrency.split(",")]
    config, _ = HF_MODEL_ID_TO_FILENAMES[args.model]
    device = torch.device(args.device)
    label, machine = device_label(device)
    r: dict = {"model": args.model, "machine": machine, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "image": f"{args.image.name} ({source.width}×{source.height}) resized to {width}×{height}",
               "random_weights": "RANDOM" in args.checkpoint.name, "rss_requests": args.rss_requests}

    # --- Meta's predictor, in this process, in the service's precision ---
    predictor = SAM2ImagePredictor(build_sam2(config, str(args.checkpoint), device=str(device)))
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def raw(pixels: np.ndarray, points) -> tuple[float, np.ndarray]:
        with torch.inference_mode(), precision:
            started = time.perf_counter()
            predictor.set_image(pixels)
            masks, scores, _ = predictor.predict(point_coords=np.array(points), point_labels=np.array([1]),
                                                 multimask_output=True)
            elapsed = time.perf_counter() - started
        return elapsed, masks[int(np.argmax(scores))] > 0

    def raw_chain(pixels: np.ndarray, points, labels) -> Iterator[tuple[float, np.ndarray]]:
        """Meta's interactive loop, a click at a time: every click so far and the previous best
        logits as mask_input; the time of each ``predict`` (the image set once, first)."""
        with torch.inference_mode(), precision:
            predictor.set_image(pixels)
        previous = None
        for count in range(1, len(points) + 1):
            with torch.inference_mode(), precision:
                started = time.perf_counter()
                out, scores, logits = predictor.predict(
                    point_coords=np.array(points[:count]), point_labels=np.array(labels[:count]),
                    mask_input=None if previous is None else previous[None], multimask_output=count == 1)
                elapsed = time.perf_counter() - started
            best = int(np.argmax(scores))
            previous = logits[best]
            yield elapsed, out[best] > 0

    decoded = lambda data: np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    raw(base, [[10.0, 10.0]])  # the predictor's own warm-up
    with precision:
        predictor.set_image(big)
        big_masks, big_scores, _ = predictor.predict(point_coords=np.array([[1900.0, 1000.0]]),
                                                     point_labels=np.array([1]))
    png_rows = png_encoding_table(big_masks[int(np.argmax(big_scores))] > 0)

    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        s3_server = moto_server(logs)
        s3_server.start("/moto-api/")
        s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
        prepare_mask_bucket(s3, BUCKET, PREFIX)
        env = {"SAM2_CHECKPOINT": str(args.checkpoint), "SAM2_MODEL": args.model, "SAM2_DEVICE": args.device,
               "S3_BUCKET_NAME_STAGING": BUCKET, "S3_ENDPOINT_URL": s3_server.url, **CREDENTIALS}
        servers: list[Process] = []
        try:
            server = bento_server("bench", logs, env, project=REPO)
            servers.append(server)
            started = time.perf_counter()
            server.start("/readyz", timeout=900)
            r["startup_seconds"] = time.perf_counter() - started
            rss = RssSampler(server.proc.pid)
            client = Client(server)

            # The first requests after start-up, each a new image, against steady ones below.
            firsts = [client.segment(data, pts)[0] for data, pts in
                      zip(variants(base, 4, seed=1), clicks(width, height, 4, 1))]

            # Alternate raw and served on the same new images, so both see the same machine.
            images = variants(base, args.cold, seed=2)
            raw_times, cold, cold_stages, differing = [], [], [], []
            for data, pts in zip(images, clicks(width, height, args.cold, 3)):
                elapsed, expected = raw(decoded(data), pts)
                raw_times.append(elapsed)
                served, response = client.segment(data, pts)
                cold.append(served)
                cold_stages.append(stages(response))
                differing.append(int(np.count_nonzero(client.mask(response) != expected)))
            r.update(raw=statistics.median(raw_times), cold=statistics.median(cold), first=firsts,
                     differing_pixels=differing, pixels=width * height, cold_stages=mean_stages(cold_stages))
            print(f"raw set_image+predict {r['raw']:.3f} s; served new image {r['cold']:.3f} s "
                  f"(first after start-up {firsts[0]:.3f} s); differing pixels {differing}")

            hits = [client.segment(images[0], pts) for pts in clicks(width, height, args.cold * 3, 4)]
            r["hit"] = statistics.median(elapsed for elapsed, _ in hits)
            r["hit_stages"] = mean_stages([stages(response) for _, response in hits])
            print(f"served cache hit {r['hit'] * 1000:.1f} ms (server {r['hit_stages']['total'] * 1000:.1f} ms)")

            big_images = variants(big, args.big, seed=9)
            r["cold_4k"] = statistics.median(client.segment(data, [[1900.0, 1000.0]])[0] for data in big_images)
            print(f"served new 3840×2160 image {r['cold_4k']:.3f} s")

            r["levels"] = {}
            for level in levels:
                count = max(2 * level, 4)
                batch = variants(base, count, seed=100 + level)
                wall, latencies = concurrent_run(server, batch, clicks(width, height, count, level), level)
                r["levels"][str(level)] = {"throughput": count / wall, "p50": float(np.percentile(latencies, 50)),
                                           "p95": float(np.percentile(latencies, 95))}
                print(f"concurrency {level}: {count / wall:.3f} req/s")

            warm = variants(base, 4, seed=5)
            repeat_clicks = clicks(width, height, args.rss_requests + 20, 6)
            for i in range(20):
                client.segment(warm[i % 4], repeat_clicks[i])
            r["rss_before"] = rss.current()
            for i in range(args.rss_requests):
                client.segment(warm[i % 4], repeat_clicks[20 + i])
            r["rss_after"] = rss.current()
            rss.stop()
            r["rss_peak"] = rss.peak

            session_clicks = clicks(width, height, 5, 7)
            session_image = variants(base, 1, seed=8)[0]
            started = time.perf_counter()
            for pts in session_clicks:
                client.segment(session_image, pts)
            r["session_cached"] = time.perf_counter() - started

            # A chained session, as /ui and Meta's notebooks click: every click so far, and the
            # previous answer's mask_id (its logits become the mask prompt), against the predictor's loop.
            chain_labels = [1, 1, 0, 1, 0]
            chain: dict[str, list[list]] = {"served": [], "server": [], "predict": [], "differing_pixels": []}
            for session in range(args.chain_sessions):
                chain_image = variants(base, 1, seed=10 + session)[0]
                chain_points = [pts[0] for pts in clicks(width, height, 5, 20 + session)]
                rows = {key: [] for key in chain}
                mask_id = None
                # A click of each in turn, so that both see the same machine.
                for count, (raw_click, raw_mask) in enumerate(raw_chain(decoded(chain_image), chain_points,
                                                                        chain_labels), start=1):
                    fields = {"labels": chain_labels[:count], **({"previous_mask_id": mask_id} if mask_id else {})}
                    elapsed, response = client.segment(chain_image, chain_points[:count], **fields)
                    rows["predict"].append(raw_click)
                    rows["served"].append(elapsed)
                    rows["server"].append(stages(response)["total"])
                    rows["differing_pixels"].append(int(np.count_nonzero(client.mask(response) != raw_mask)))
                    mask_id = response.json()["mask_id"]
                for key, values in rows.items():
                    chain[key].append(values)
            r["chain"] = chain
            later = lambda key: statistics.median(value for row in chain[key] for value in row[1:])
            print(f"chained sessions: clicks 2-5 served {later('served') * 1000:.1f} ms (server "
                  f"{later('server') * 1000:.1f} ms), predictor predict {later('predict') * 1000:.1f} ms; "
                  f"differing pixels {chain['differing_pixels']}")
            server.stop()

            if not args.skip_uncached:
                uncached = bento_server("bench-nocache", logs, project=REPO,
                                        env={**env, "SAM2_CACHE_MAX_ENTRIES": "0"})
                servers.append(uncached)
                uncached.start("/readyz", timeout=900)
                plain = Client(uncached)
                started = time.perf_counter()
                for pts in session_clicks:
                    plain.segment(session_image, pts)
                r["session_uncached"] = time.perf_counter() - started
                uncached.stop()

            if not args.skip_batching:
                batching = bento_server("bench-batching", logs, project=REPO, env={**env, "SAM2_ENCODER_BATCH": "4"})
                servers.append(batching)
                batching.start("/readyz", timeout=900)
                for level in [c for c in levels if c >= 4]:
                    count = 2 * level
                    batch = variants(base, count, seed=200 + level)
                    wall, latencies = concurrent_run(batching, batch, clicks(width, height, count, level), level)
                    r["levels"][str(level)]["batched_throughput"] = count / wall
                    print(f"concurrency {level}, encoder batching 4: {count / wall:.3f} req/s")
        finally:
            for served in servers:
                served.stop()
            s3_server.stop()

    r["png"] = png_rows
    out = args.docs / "benchmarks" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    render(sorted(out.parent.glob("*.json")), args.docs)
    print(f"wrote {out} and {args.docs / 'PERFORMANCE.md'}")


# --- the report: every run's file, side by side -------------------------------------------------

def goals(r: dict) -> list[tuple[str, str, str]]:
    """(measure, value, goal) of one run; the goals are the GPU path's (issue #10), and the CPU's."""
    levels = r["levels"]
    raw_rate = 1 / r["raw"]
    throughput = lambda c: levels[c]["throughput"] / raw_rate if c in levels else float("nan")
    hit_server = r["hit_stages"]["total"]
    hit_model = sum(r["hit_stages"].get(s, 0) for s in MODEL_STAGES)
    most = max(r["differing_pixels"])
    steady = r["cold"]
    return [
        ("served new image / predictor `set_image`+`predict`", f"{r['cold'] / r['raw']:.3f}",
         "GPU ≤ 1.3 (aim 1.15); CPU ≤ 1.05"),
        ("served cache-hit click, server time", f"{hit_server * 1000:.1f} ms (decoder {hit_model * 1000:.1f} ms)",
         "GPU ≤ 15 ms (aim decoder + 5 ms)"),
        ("throughput, 1 client / predictor in a loop", f"{throughput('1'):.3f}", "no worse than before"),
        ("throughput, 4 clients / predictor in a loop", f"{throughput('4'):.3f}", "CPU ≥ 0.95"),
        ("throughput, 8 clients / predictor in a loop", f"{throughput('8'):.3f}", "GPU ≥ 1.5"),
        ("first request after start-up / steady new image", f"{r['first'][0] / steady:.2f} "
         f"(worst of the first 4: {max(r['first']) / steady:.2f})", "≤ 2"),
        ("new 3840×2160 image / new 1280×720 image", f"{r['cold_4k'] / r['cold']:.2f}", "GPU ≤ 2"),
        ("pixels differing from the predictor's mask, worst image", f"{most} of {r['pixels']} "
         f"({most / r['pixels'] * 100:.4f} %)", "0 (≤ 0.01 % where rounding changes)"),
        (f"RSS growth over {r['rss_requests']} requests after warm-up",
         f"{(r['rss_after'] - r['rss_before']) / r['rss_before'] * 100:+.1f} %", "< 5 %"),
    ]


def stage_rows(r: dict, kind: str) -> list[str]:
    timing = r[f"{kind}_stages"]
    outside = {name: value for name, value in timing.items()
               if name not in (*MODEL_STAGES, "model_call", "total")}
    calls = 2 if kind == "cold" else 1  # a new image: the key alone, then the image
    hop = (timing.get("model_call", 0) - sum(timing.get(s, 0) for s in MODEL_STAGES)) / calls
    rows = [f"| {name} | {value * 1000:.1f} |" for name, value in outside.items()]
    rows.append(f"| hop to the model service and back, per call ({calls} per request) | {hop * 1000:.1f} |")
    rows.append(f"| model: queue + encoder + decoder | "
                f"{sum(timing.get(s, 0) for s in MODEL_STAGES) * 1000:.1f} |")
    rows.append(f"| **server total** | **{timing['total'] * 1000:.1f}** |")
    return rows


def chain_lines(run: dict) -> list[str]:
    """The chained five-click sessions, where the run has them: medians over the sessions."""
    chain = run.get("chain")
    if chain is None:
        return []
    ms = lambda seconds: f"{seconds * 1000:.1f} ms"
    at = lambda key, click: statistics.median(row[click] for row in chain[key])
    later = lambda key: statistics.median(value for row in chain[key] for value in row[1:])
    return [
        f"Five-click chained sessions, {len(chain['served'])} of them, each on a new image (each request sends every "
        "click so far and the previous `mask_id`, whose logits become the mask prompt, as `/ui` does), against "
        "`SAM2ImagePredictor.predict` with every click so far and the previous best logits as `mask_input` (its "
        "image set once), a click of each in turn; medians over the sessions:",
        "",
        "| click | served, client | served, server time | predictor `predict` | pixels differing from the predictor's, worst |",
        "|---|---|---|---|---|",
        *(f"| {i + 1}{' (new image)' if i == 0 else ''} | {ms(at('served', i))} | {ms(at('server', i))} | "
          f"{ms(at('predict', i))}{' (after `set_image`)' if i == 0 else ''} | "
          f"{max(row[i] for row in chain['differing_pixels'])} |" for i in range(len(chain["served"][0]))),
        "",
        f"Clicks 2-5: {ms(later('served'))} a click at the client, {ms(later('server'))} of server time, "
        f"{later('server') / later('predict'):.2f}× the predictor's `predict`.",
        "",
    ]


def render(files: list[Path], docs: Path) -> None:
    runs = [json.loads(f.read_text()) for f in files]
    lines = [
        "# Performance",
        "",
        "Made by `scripts/benchmark.py`: the served API (`bentoml serve service.py`, both services, masks stored",
        "on a local S3 server) against Meta's `SAM2ImagePredictor` in the benchmark's own process, on the same",
        "images, weights and precision (bf16 autocast on CUDA, as the service runs), one click per request.",
        "Raw and served new-image requests alternate on the same images, so both see the same machine.",
        "Each run writes `docs/benchmarks/<machine>.json`; this page shows every run there.",
        "",
        "Reproduce: `.venv/bin/python scripts/benchmark.py` (CPU), or on a GPU machine",
        "`python scripts/benchmark.py --device cuda --model facebook/sam2.1-hiera-large --checkpoint <file>`",
        "(`scripts/make_test_checkpoint.py --model-id facebook/sam2.1-hiera-large` writes random weights for it to",
        "`checkpoints/sam2.1_hiera_large.RANDOM-TEST-WEIGHTS.pt`: they time like real ones).",
        "",
    ]
    if all(run["machine"].startswith("CPU") for run in runs):
        lines += ["No GPU machine was lent to the sessions that made this page, so there are no GPU figures yet:",
                  "the goals of the GPU path stand as targets, and the CPU figures show the architecture holds its",
                  "CPU bounds. The GPU run is one command (above).", ""]
    for run in runs:
        lines += [
            f"## {run['machine']}: {run['model']}",
            "",
            f"{run['date']}, torch {run['torch']}, {run['image']}"
            f"{'; random-init test weights' if run['random_weights'] else ''}. Model service ready "
            f"{run['startup_seconds']:.0f} s after start.",
            "",
            "| measure | value | goal |",
            "|---|---|---|",
            *[f"| {name} | {value} | {goal} |" for name, value, goal in goals(run)],
            "",
            f"Predictor `set_image`+`predict`: median {run['raw'] * 1000:.1f} ms ({1 / run['raw']:.2f} images/s in a "
            f"loop). Served: new image {run['cold'] * 1000:.1f} ms, cache hit {run['hit'] * 1000:.1f} ms, new "
            f"3840×2160 image {run['cold_4k'] * 1000:.1f} ms (medians, client side).",
            "",
            "| clients | throughput (req/s, a new image each) | / predictor | p50 (s) | p95 (s) | with `SAM2_ENCODER_BATCH=4` |",
            "|---|---|---|---|---|---|",
        ]
        for level, row in run["levels"].items():
            batched = row.get("batched_throughput")
            with_batching = f"{batched:.3f} ({batched / row['throughput']:.2f}×)" if batched else "—"
            lines.append(f"| {level} | {row['throughput']:.3f} | {row['throughput'] * run['raw']:.3f} | "
                         f"{row['p50']:.2f} | {row['p95']:.2f} | {with_batching} |")
        for kind, title in (("cold", "a new image"), ("hit", "a cache hit")):
            lines += ["", f"Where a request's time goes, {title} (means of `Server-Timing`, ms; `png` is summed over",
                      "the upload threads, inside `store`):", "", "| stage | ms |", "|---|---|",
                      *stage_rows(run, kind)]
        uncached = (f", {run['session_uncached']:.2f} s with `SAM2_CACHE_MAX_ENTRIES=0`"
                    if "session_uncached" in run else "")
        lines += [
            "",
            f"A five-click session on one new image: {run['session_cached']:.2f} s with the embedding cache"
            f"{uncached}. Server RSS (both services): "
            f"{run['rss_before'] / 2**20:.0f} MiB after warm-up, {run['rss_after'] / 2**20:.0f} MiB after "
            f"{run['rss_requests']} more requests, peak {run['rss_peak'] / 2**20:.0f} MiB.",
            "",
            *chain_lines(run),
            "PNG encoding of a 3840×2160 mask: " + "; ".join(f"{name} {ms:.1f} ms, {size} bytes"
                                                             for name, ms, size in run["png"]) + ".",
            "",
        ]
    lines += ["![latency and throughput against concurrency](latency_vs_concurrency.png)", ""]
    # Clicks decoded in the browser are measured in Chromium by tests/integration/test_ui_browser.py, not
    # here; its figures are kept in docs/benchmarks/browser.md and shown with these.
    browser = docs / "benchmarks" / "browser.md"
    if browser.is_file():
        lines += [*browser.read_text().splitlines(), ""]
    lines += DESIGN_NOTES
    (docs / "PERFORMANCE.md").write_text("\n".join(lines))
    plot(runs, docs / "latency_vs_concurrency.png")


DESIGN_NOTES = """\
## The GPU path: what was tried, what it gave, what is left

Measured on an H100 before this shape (the GPU-path issue): the model took 25-36 ms, the served
request 128 ms, and 4 clients got 0.31x of a predictor in a loop, because multipart parsing, image
decoding, SAM 2's CPU resize, hashing, PNG encoding and boto3 shared one process, and its GIL, with
the thread that launches the GPU's kernels. What the service does now, and why:

- **Two services** (kept). `SAM2API` (CPU, several processes) does all codec, HTTP and S3 work;
  `SAM2Model` (one process) only drives the device. The cost of the hop is the "hop to the model
  service" row above: what crosses is the decoded image once per new image (without a copy: pickle
  protocol 5 passes the array's memory out of band) and one bit per mask pixel back. A process pool
  inside one service would have kept HTTP parsing beside the GPU's thread and would pay the same
  copy; BentoML's service split also lets BentoCloud and Kubernetes scale CPU and GPU apart.
- **One device thread** (kept). Every model call runs on it: the H100's 1.3-1.6 s first request
  per API thread was per-thread CUDA state (cuBLAS handles, workspaces); now the warm-up pays it
  once, on that thread, before `/readyz`.
- **Resize and normalise on the device** (kept): the uint8 image crosses to the device and becomes
  float there, in place (on the CPU bit for bit what `SAM2Transforms` computes, tested; on an H200,
  0.36 ms against 5.5 ms on the CPU at 720p, 3.6 against 30 ms at 4K).
- **Masks upsampled, thresholded and bit-packed on the device** (kept), one at a time: H·W/8 bytes
  per mask cross to the host instead of a float map, and memory does not grow with the object count.
- **Encoder batching across requests** (`SAM2_ENCODER_BATCH`, kept off by default). On an H200 it
  raised the encoder from 59 images/s (batch 1) to 88 (2) and 96 (8), but under bf16 a batched
  encoder rounds differently: one of three masks differed from the batch-1 predictor's in 0.22 % of
  its pixels, above the 0.01 % this service allows itself. On the CPU it costs throughput (table
  above). Turn it on where throughput matters more than pixel equality with the unbatched predictor.
- **`torch.compile` of the encoder** (`SAM2_COMPILE`, off): on an H200, 60 s of compiling for no gain
  (18.7 against 18.4 ms); max-autotune did not finish in 150 s.
- **Left for a session with a GPU**, each to be measured before it is kept: decoding JPEG uploads with
  nvJPEG on the model's device (2 against 13 ms at 720p, 17 against 168 ms at 4K on an H200; it
  rounds differently from Pillow's decoder, so the differing pixels must be counted), and capturing
  the prompt encoder and mask decoder in CUDA graphs at the common prompt shapes (7 ms of mostly
  launch overhead on an H200).
""".splitlines()


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        levels = [int(c) for c in run["levels"]]
        rows = list(run["levels"].values())
        name = run["machine"].split(",")[0]
        latency.plot(levels, [row["p50"] / run["raw"] for row in rows], "o-", label=f"{name}: p50")
        latency.plot(levels, [row["p95"] / run["raw"] for row in rows], "s--", label=f"{name}: p95")
        throughput.plot(levels, [row["throughput"] * run["raw"] for row in rows], "o-", label=name)
    latency.set_title("latency / predictor's set_image+predict", fontsize=9)
    throughput.set_title("throughput / predictor in a loop", fontsize=9)
    throughput.axhline(1.0, color="gray", linestyle=":")
    for ax in (latency, throughput):
        ax.set_xlabel("concurrent clients (a new image each)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
