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

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


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


def segment(http: httpx.Client, url: str, case: Case) -> httpx.Response:
    return http.post(f"{url}/segment", files={"image": (case.name, case.image)},
                     data={k: json.dumps(v) for k, v in case.fields.items()})


def solo_masks(url: str, cases: list[Case]) -> dict[str, bytes]:
    """Each case sent alone, one at a time: the PNG bytes every concurrent copy must match."""
    with httpx.Client(timeout=300) as http:
        masks = {}
        for case in cases:
            response = segment(http, url, case)
            response.raise_for_status()
            masks[case.name] = http.get(response.json()["mask_url"]).content
        return masks


def run_load(url: str, cases: list[Case], expected: dict[str, bytes], total: int, concurrency: int,
             seed: int = 0) -> LoadReport:
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
        response = segment(http, url, case)
        elapsed = time.perf_counter() - started
        mask_url = response.json().get("mask_url") if response.status_code == 200 else None
        png = http.get(mask_url).content if mask_url else None
        with lock:
            report.statuses[response.status_code] += 1
            report.latencies.append(elapsed)
            if mask_url:
                report.stored += 1
                urls.append(mask_url)
                if png is None or not png.startswith(b"\x89PNG"):
                    report.missing.append(mask_url)
                elif png != expected[case.name]:
                    report.mismatched.append(f"{case.name}: {mask_url}")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, picks))
    report.wall_seconds = time.perf_counter() - started
    report.duplicate_keys = len(urls) - len(set(urls))
    return report


# --- hostile traffic beside the normal load --------------------------------------------------

@dataclass
class HostileReport:
    statuses: Counter = field(default_factory=Counter)  # by kind and status: ("slow body", 408)

    @property
    def server_errors(self) -> int:
        return sum(count for (_, status), count in self.statuses.items() if status >= 500)


def run_hostile(url: str, stop: threading.Event, report: HostileReport, clients: int = 2) -> list[threading.Thread]:
    """Start ``clients`` threads of each hostile kind against ``url`` until ``stop`` is set: bodies
    trickled at 50 bytes/s, 1x200000 images, ambiguous framing (Content-Length with chunked), and
    random paths nobody serves. Each records the status it got."""
    from io import BytesIO

    from PIL import Image

    from .rawhttp import RawRequest

    thin = BytesIO()
    Image.new("L", (1, 200_000)).save(thin, format="PNG")
    thin_image = thin.getvalue()
    boundary = "hostile"
    form_head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode()

    def record(kind: str, status: int) -> None:
        report.statuses[(kind, status)] += 1

    def slow_body() -> None:
        request = RawRequest(url, "/segment", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                               "Content-Length": str(10**6)})
        request.send(form_head)
        while not stop.is_set() and not request.answered() and request.send(b"x" * 50):
            time.sleep(1)
        record("slow body", request.response().status)

    def thin_images(http: httpx.Client) -> None:
        response = http.post(f"{url}/segment", files={"image": ("thin.png", thin_image)}, data={"points": "[[0, 0]]"})
        record("1x200000 image", response.status_code)

    def ambiguous_framing() -> None:
        request = RawRequest(url, "/segment", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                               "Content-Length": "100", "Transfer-Encoding": "chunked"})
        request.send_chunk(form_head)
        record("Content-Length + chunked", request.response().status)

    def random_paths(http: httpx.Client) -> None:
        record("random path", http.get(f"{url}/{uuid.uuid4().hex}/{uuid.uuid4().hex}.php").status_code)

    def loop(kind) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    kind(http) if kind in (thin_images, random_paths) else kind()
                except (OSError, httpx.HTTPError):
                    record(kind.__name__, 0)  # a connection the server closed: no status
                time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(kind,), daemon=True)
               for kind in (slow_body, thin_images, ambiguous_framing, random_paths) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


@contextmanager
def hostile_traffic(url: str, clients: int = 2) -> Iterator[HostileReport]:
    """``run_hostile`` in a process of its own for the duration of the block, as attackers are other
    machines: its threads then take no GIL time from the load client's, whose latencies would
    otherwise count the attack's client-side work. The report is filled when the block exits."""
    spawn = multiprocessing.get_context("spawn")
    stop, ready, results = spawn.Event(), spawn.Event(), spawn.Queue()
    process = spawn.Process(target=_hostile_process, args=(url, clients, stop, ready, results), daemon=True)
    process.start()
    report = HostileReport()
    try:
        if not ready.wait(120):
            raise RuntimeError("the hostile traffic process did not start")
        yield report
    finally:
        stop.set()
        if process.is_alive() or not results.empty():
            report.statuses.update(results.get(timeout=120))
        process.join(timeout=30)


def _hostile_process(url: str, clients: int, stop, ready, results) -> None:
    report = HostileReport()
    threads = run_hostile(url, stop, report, clients)
    ready.set()
    stop.wait()
    for thread in threads:
        thread.join(timeout=90)
    results.put(dict(report.statuses))
