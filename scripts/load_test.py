"""Load test on loopback: N requests at concurrency C over the test images, against a real server
and a local S3 server. Checks zero 5xx, every mask stored and byte-identical to the same request
sent alone, no key reused, and the server's memory. Bounded: it stops after N requests.
The server has two API keys: the load is one key's, the hostile traffic the other's. With
--hostile, the same load runs a second time beside hostile traffic from a process of its own (as
from other machines): bodies trickled at 50 bytes/s, 1x200000 images, Content-Length with chunked,
random paths, mask_input bombs, format amplification (32 objects' candidates with RLE and polygons
of a noise image; the server's response budget is 1 MiB here, so that this CPU makes the refused
request quickly), direct calls to the model service's local socket with a pickle that would plant
a file, the load key's task ids read, retried and canceled with the other key, and one client
flooding /segment_everything. The normal requests' p95 is compared with the first run's; no 500
anywhere, no 5xx but the flood's refusals, and the pickle never runs.

    .venv/bin/python scripts/load_test.py --requests 500 --concurrency 8
    .venv/bin/python scripts/load_test.py --requests 200 --concurrency 8 --hostile
    .venv/bin/python scripts/load_test.py --requests 300 --concurrency 8 --hostile --isolate-model
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import boto3
import psutil

import _shared  # noqa: F401  (puts the repository's root on sys.path, for tests.support)
from tests.support.loadcheck import HostileReport, Tenancy, hostile_traffic, load_cases, run_load, solo_masks
from tests.support.localdev import bento_server, moto_server, prepare_mask_bucket

REPO = Path(__file__).resolve().parents[1]
LOAD_KEY, HOSTILE_KEY = "load-test-key-of-the-load", "load-test-key-of-the-attacker"


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (affinity is per thread; threads made later inherit their maker's)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cpus)


def isolate_model(server_pid: int, others: list[int]) -> None:
    """The model service's worker on CPU 0, every other process of the run on the remaining CPUs."""
    every = os.sched_getaffinity(0)
    model_cpus, rest = {min(every)}, every - {min(every)}
    if not rest:
        raise SystemExit("--isolate-model needs at least 2 CPUs")
    for process in [psutil.Process(server_pid), *psutil.Process(server_pid).children(recursive=True)]:
        pin(process.pid, model_cpus if "SAM2Model" in " ".join(process.cmdline()) else rest)
    for pid in others:
        pin(pid, rest)
    print(f"model service on CPU {sorted(model_cpus)}, everything else on CPUs {sorted(rest)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--checkpoint", type=Path,
                        default=REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt")
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--hostile", action="store_true", help="run the load again beside hostile traffic")
    parser.add_argument("--isolate-model", action="store_true",
                        help="the model service on CPU 0 alone (one torch thread), everything else (API workers, "
                        "S3, the clients, the attack) on the other CPUs: as deployed, where the model service has "
                        "a machine of its own; the same for both runs")
    args = parser.parse_args()
    hostile = HostileReport()

    with tempfile.TemporaryDirectory() as logs:
        s3_server = moto_server(Path(logs))
        s3_server.start("/moto-api/")
        s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
        prepare_mask_bucket(s3, "load-masks", "sam2-api-masks/")
        server = bento_server("load", Path(logs), project=REPO, env={
            "SAM2_CHECKPOINT": str(args.checkpoint), "S3_BUCKET_NAME_STAGING": "load-masks",
            "S3_ENDPOINT_URL": s3_server.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
            "SAM2_API_KEYS": f"{LOAD_KEY},{HOSTILE_KEY}", "SAM2_MAX_RESPONSE_BYTES": str(2**20),
            **({"OMP_NUM_THREADS": "1"} if args.isolate_model else {}),
        })
        try:
            server.start("/readyz")
            if args.isolate_model:
                isolate_model(server.proc.pid, others=[s3_server.proc.pid, os.getpid()])
            cases = load_cases(args.images)
            expected = solo_masks(server.url, cases, LOAD_KEY)
            warm = run_load(server.url, cases, expected, total=40, concurrency=args.concurrency, seed=0,
                            api_key=LOAD_KEY)
            rss_before = tree_rss(server.proc.pid)
            report = run_load(server.url, cases, expected, args.requests, args.concurrency, seed=1, api_key=LOAD_KEY)
            rss_after = tree_rss(server.proc.pid)
            if args.hostile:
                tenancy = Tenancy(LOAD_KEY, HOSTILE_KEY, server.dependency_socket("SAM2Model"),
                                  str(Path(logs) / "planted-by-a-pickle"))
                with hostile_traffic(server.url, tenancy=tenancy) as hostile:
                    under_attack = run_load(server.url, cases, expected, args.requests, args.concurrency, seed=2,
                                            api_key=LOAD_KEY)
        finally:
            server.stop()
            s3_server.stop()

    growth = (rss_after - rss_before) / rss_before
    print(f"requests: {report.requests} at concurrency {args.concurrency} over {len(cases)} image+prompt cases "
          f"in {report.wall_seconds:.1f} s (after {warm.requests} warm-up requests)")
    print(f"statuses: {dict(report.statuses)}; 5xx: {report.server_errors}")
    print(f"masks stored: {report.stored}; missing: {len(report.missing)}; "
          f"differing from the solo request: {len(report.mismatched)}; repeated keys: {report.duplicate_keys}")
    print(f"latency p50 {report.percentile(50):.3f} s, p95 {report.percentile(95):.3f} s")
    print(f"server RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB ({growth * 100:+.1f} %)")
    ok = (report.server_errors == 0 and report.stored == report.requests and not report.missing
          and not report.mismatched and report.duplicate_keys == 0 and growth < 0.05)
    if args.hostile:
        ratio = under_attack.percentile(95) / report.percentile(95)
        print(f"beside hostile traffic: statuses {dict(under_attack.statuses)}; p50 "
              f"{under_attack.percentile(50):.3f} s, p95 {under_attack.percentile(95):.3f} s = {ratio:.2f}x the p95 "
              f"without it; masks differing: {len(under_attack.mismatched)}, missing: {len(under_attack.missing)}")
        print("hostile requests: " + ", ".join(f"{kind} -> {status}: {count}"
                                               for (kind, status), count in sorted(hostile.statuses.items())))
        print(f"the direct call's pickle {'RAN on the model service' if hostile.unpickled else 'never ran'}")
        print("slowest beside it (seconds, sent at, case, Server-Timing in ms):")
        for seconds, sent_at, case, timing in under_attack.slowest(8):
            print(f"  {seconds:6.2f} s at {sent_at:6.1f} s  {case}: {timing}")
        ok = (ok and under_attack.server_errors == 0 and hostile.server_errors == 0 and ratio <= 2
              and under_attack.stored == under_attack.requests and not under_attack.mismatched
              and not hostile.unpickled)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
