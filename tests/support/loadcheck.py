"""A bounded load run against a served /segment: nothing lost, nothing mixed up, no key reused.

Used by tests/integration/test_reliability.py (small) and scripts/load_test.py (500+ requests),
against any server URL.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Case:
    name: str
    image: bytes
    fields: dict


@dataclass
class LoadReport:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    stored: int = 0
    mismatched: list[str] = field(default_factory=list)  # masks that differ from the solo request's
    missing: list[str] = field(default_factory=list)  # URLs that could not be fetched
    duplicate_keys: int = 0
    latencies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    # (seconds, when it was sent after the start, case, its Server-Timing header): where slow ones waited
    timings: list[tuple[float, float, str, str]] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0

    def slowest(self, count: int) -> list[tuple[float, float, str, str]]:
        return sorted(self.timings, reverse=True)[:count]


def load_cases(test_images: Path) -> list[Case]:
    """Six image+prompt combinations over the test photos in ``test_images`` (tests/data)."""
    read = lambda name: (test_images / name).read_bytes()
    return [
        Case("chelsea-click", read("chelsea.png"), {"points": [[225, 150]]}),
        Case("chelsea-box", read("chelsea.png"), {"box": [100, 50, 350, 280]}),
        Case("coffee-box", read("coffee.png"), {"box": [150, 50, 450, 350]}),
        Case("camera-clicks", read("camera.png"), {"points": [[256, 200], [100, 100]], "labels": [1, 0]}),
        Case("rocket-click", read("rocket.jpg"), {"points": [[320, 200]]}),
        Case("astronaut-box", read("astronaut.png"), {"box": [100, 50, 400, 500], "points": [[250, 250]]}),
    ]


def segment(http: httpx.Client, url: str, case: Case, api_key: str | None = None) -> httpx.Response:
    return http.post(f"{url}/segment", files={"image": (case.name, case.image)},
                     data={k: json.dumps(v) for k, v in case.fields.items()}, headers=bearer(api_key))


def bearer(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def solo_masks(url: str, cases: list[Case], api_key: str | None = None) -> dict[str, bytes]:
    """Each case sent alone, one at a time: the PNG bytes every concurrent copy must match."""
    with httpx.Client(timeout=300) as http:
        masks = {}
        for case in cases:
            response = segment(http, url, case, api_key)
            response.raise_for_status()
            masks[case.name] = http.get(response.json()["mask_url"]).content
        return masks


def run_load(url: str, cases: list[Case], expected: dict[str, bytes], total: int, concurrency: int,
             seed: int = 0, api_key: str | None = None) -> LoadReport:
    report = LoadReport(requests=total)
    picks = random.Random(seed).choices(cases, k=total)
    urls: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def one(case: Case) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=300)
        http = local.http
        started = time.perf_counter()
        response = segment(http, url, case, api_key)
        elapsed = time.perf_counter() - started
        timing = (elapsed, started - began, case.name, response.headers.get("Server-Timing", ""))
        mask_url = response.json().get("mask_url") if response.status_code == 200 else None
        png = http.get(mask_url).content if mask_url else None
        with lock:
            report.statuses[response.status_code] += 1
            report.latencies.append(elapsed)
            report.timings.append(timing)
            if mask_url:
                report.stored += 1
                urls.append(mask_url)
                if png is None or not png.startswith(b"\x89PNG"):
                    report.missing.append(mask_url)
                elif png != expected[case.name]:
                    report.mismatched.append(f"{case.name}: {mask_url}")

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, picks))
    report.wall_seconds = time.perf_counter() - began
    report.duplicate_keys = len(urls) - len(set(urls))
    return report


# --- hostile traffic beside the normal load --------------------------------------------------

@dataclass
class HostileReport:
    statuses: Counter = field(default_factory=Counter)  # by kind and status: ("slow body", 408)
    unpickled: bool = False  # a direct call's pickle ran on the model service

    @property
    def server_errors(self) -> int:
        """Answers that are the server's fault: a 500 of any kind, or any 5xx of a kind the service
        must refuse with a 4xx (a flood of one key's heavy work may be refused with a 503 saying so)."""
        return sum(count for (kind, status), count in self.statuses.items()
                   if status == 500 or (status > 500 and kind not in REFUSABLE))


@dataclass(frozen=True)
class Tenancy:
    """Two API keys of the server: ``victim``'s are the normal load's, ``attacker``'s the hostile
    traffic's; and the model service's local socket, to call it directly."""

    victim: str
    attacker: str
    model_socket: str | None = None
    planted: str | None = None  # the file a direct call's pickle would create if it were unpickled


FLOOD = "one key's segment-everything flood"
REFUSABLE = frozenset({FLOOD})


class _PlantsAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def run_hostile(url: str, stop: threading.Event, report: HostileReport, clients: int = 2,
                tenancy: Tenancy | None = None) -> list[threading.Thread]:
    """Start ``clients`` threads of each hostile kind against ``url`` until ``stop`` is set: bodies
    trickled at 50 bytes/s, 1x200000 images, ambiguous framing (Content-Length with chunked), random
    paths nobody serves, a 16384x3000 ``mask_input`` bomb, and 32 objects' candidates with both
    formats on a noise image (refused by the response budget). With ``tenancy``, also: direct calls
    to the model service with a pickle that would plant a file, another key's task ids (status, get,
    retry, cancel), and one thread flooding ``/segment_everything`` with the attacker's key. Each
    records the status it got."""
    import pickle
    from io import BytesIO

    import numpy as np
    from PIL import Image

    from tests.support.rawhttp import RawRequest

    def encoded(image: Image.Image, kind: str, **options) -> bytes:
        out = BytesIO()
        image.save(out, format=kind, **options)
        return out.getvalue()

    thin_image = encoded(Image.new("L", (1, 200_000)), "PNG")
    small_image = encoded(Image.new("RGB", (64, 64)), "PNG")
    mask_bomb = encoded(Image.new("I", (16384, 3000)), "TIFF", compression="tiff_adobe_deflate")
    noise = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), np.uint8)), "PNG")
    noisy_objects = json.dumps([{"points": [[x, y]], "candidates": True} for x in range(32, 1024, 128)
                                for y in range(32, 1024, 256)])
    photo = encoded(Image.new("RGB", (256, 192), (90, 140, 60)), "PNG")
    boundary = "hostile"
    form_head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
    attacker = bearer(tenancy.attacker if tenancy else None)

    def record(kind: str, status: int) -> None:
        report.statuses[(kind, status)] += 1

    def slow_body() -> None:
        request = RawRequest(url, "/segment", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                               "Content-Length": str(10**6), **attacker})
        request.send(form_head)
        while not stop.is_set() and not request.answered() and request.send(b"x" * 50):
            time.sleep(1)
        record("slow body", request.response().status)

    def thin_images(http: httpx.Client) -> None:
        response = http.post(f"{url}/segment", files={"image": ("thin.png", thin_image)}, data={"points": "[[0, 0]]"})
        record("1x200000 image", response.status_code)

    def ambiguous_framing() -> None:
        request = RawRequest(url, "/segment", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                               "Content-Length": "100", "Transfer-Encoding": "chunked", **attacker})
        request.send_chunk(form_head)
        record("Content-Length + chunked", request.response().status)

    def random_paths(http: httpx.Client) -> None:
        record("random path", http.get(f"{url}/{uuid.uuid4().hex}/{uuid.uuid4().hex}.php").status_code)

    def mask_input_bomb(http: httpx.Client) -> None:
        response = http.post(f"{url}/segment", files={"image": ("x.png", small_image), "mask_input": ("m.tif", mask_bomb)},
                             data={"points": "[[8, 8]]"})
        record("16384x3000 mask_input", response.status_code)

    def format_amplification(http: httpx.Client) -> None:
        response = http.post(f"{url}/segment_objects", files={"image": ("noise.png", noise)},
                             data={"objects": noisy_objects, "formats": '["rle", "polygons"]'})
        record("32 objects' candidates, both formats, noise", response.status_code)
        time.sleep(1)  # a caller waiting for its answers, not a tight loop

    def direct_model_call(http: httpx.Client) -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=tenancy.model_socket), base_url="http://model") as model:
            response = model.post("/predict", content=pickle.dumps(_PlantsAFile(tenancy.planted)),
                                  headers={"Content-Type": "application/vnd.bentoml+pickle"})
        record("direct call to the model service", response.status_code)

    victims_task: list[str] = []

    def another_keys_task(http: httpx.Client) -> None:
        if not victims_task:  # the victim's task: a clip that fails at once, before the model service
            submitted = http.post(f"{url}/track/submit", files={"video": ("v.mp4", b"not a video")},
                                  data={"objects": '[{"frame_index": 0, "points": [[1, 1]]}]'},
                                  headers=bearer(tenancy.victim))
            victims_task.append(submitted.json()["task_id"])
        query = {"task_id": victims_task[0]}
        for method, route in (("GET", "status"), ("GET", "get"), ("POST", "retry"), ("PUT", "cancel")):
            response = http.request(method, f"{url}/track/{route}", params=query)
            record(f"another key's task ({route})", response.status_code)

    def everything_flood(http: httpx.Client) -> None:
        response = http.post(f"{url}/segment_everything", files={"image": ("p.png", photo)},
                             data={"points_per_side": "4", "formats": '["rle"]'})
        record(FLOOD, response.status_code)

    def loop(kind) -> None:
        headers = attacker if kind is not another_keys_task else bearer(tenancy.attacker)
        with httpx.Client(timeout=120, headers=headers) as http:
            while not stop.is_set():
                try:
                    kind() if kind in (slow_body, ambiguous_framing) else kind(http)
                except (OSError, httpx.HTTPError):
                    record(kind.__name__, 0)  # a connection the server closed: no status
                time.sleep(0.05)

    kinds = [(kind, clients) for kind in (slow_body, thin_images, ambiguous_framing, random_paths, mask_input_bomb)]
    kinds.append((format_amplification, 1))
    if tenancy is not None:
        kinds += [(another_keys_task, 1), (everything_flood, 1)]
        if tenancy.model_socket:
            kinds.append((direct_model_call, clients))
    threads = [threading.Thread(target=loop, args=(kind,), daemon=True) for kind, count in kinds for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


@contextmanager
def hostile_traffic(url: str, clients: int = 2, tenancy: Tenancy | None = None) -> Iterator[HostileReport]:
    """``run_hostile`` in a process of its own for the duration of the block, as attackers are other
    machines: its threads then take no GIL time from the load client's, whose latencies would
    otherwise count the attack's client-side work. The report is filled when the block exits."""
    spawn = multiprocessing.get_context("spawn")
    stop, ready, results = spawn.Event(), spawn.Event(), spawn.Queue()
    process = spawn.Process(target=_hostile_process, args=(url, clients, tenancy, stop, ready, results), daemon=True)
    process.start()
    report = HostileReport()
    try:
        if not ready.wait(120):
            raise RuntimeError("the hostile traffic process did not start")
        yield report
    finally:
        stop.set()
        if process.is_alive() or not results.empty():
            report.statuses.update(results.get(timeout=180))
        process.join(timeout=30)
        report.unpickled = bool(tenancy and tenancy.planted and Path(tenancy.planted).exists())


def _hostile_process(url: str, clients: int, tenancy: Tenancy | None, stop, ready, results) -> None:
    report = HostileReport()
    threads = run_hostile(url, stop, report, clients, tenancy)
    ready.set()
    stop.wait()
    for thread in threads:
        thread.join(timeout=150)
    results.put(dict(report.statuses))
