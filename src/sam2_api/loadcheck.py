"""A bounded load run against a served /segment: nothing lost, nothing mixed up, no key reused.

Used by tests/integration/test_reliability.py (small) and scripts/load_test.py (500+ requests),
against any server URL.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
