"""scripts/benchmark.py must keep working: a tiny run against a real server writes its figures and
the report (speed is measured there, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.localdev import clean_env
from tests.conftest import REPO


def test_a_tiny_benchmark_run_writes_its_results_and_report(checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--checkpoint", str(checkpoint), "--cold", "1", "--concurrency", "1",
         "--rss-requests", "2", "--chain-sessions", "1", "--big", "1", "--skip-batching", "--skip-uncached", "--size", "320x180", "--docs", str(tmp_path)],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = json.loads((tmp_path / "benchmarks" / "cpu.json").read_text())
    assert run["differing_pixels"] == [0]  # the served mask is the predictor's
    assert run["chain"]["differing_pixels"] == [[0] * 5]  # and so is each click of a chained session
    assert run["raw"] > 0 and run["cold"] > 0 and run["hit"] > 0 and run["levels"]["1"]["throughput"] > 0
    assert {"encoder", "image_decode", "model_call", "total"} <= set(run["cold_stages"])
    report = (tmp_path / "PERFORMANCE.md").read_text()
    assert "served new image / predictor" in report and "hop to the model service" in report
    assert "Five-click chained sessions" in report
    assert (tmp_path / "latency_vs_concurrency.png").stat().st_size > 10_000
