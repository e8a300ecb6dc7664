"""`make bench` end to end at a tiny size (its figures mean nothing there: what is checked is that
it runs on a fresh machine, measures both servers, verifies every run and stops what it
started), and its report of the targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.bench import targets_report

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_tiny_bench_runs_both_servers_verifies_and_stops_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "bench-data"
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET")
    }
    env["BENCH_DATA_DIR"] = str(data_dir)
    argv = [
        *(sys.executable, "-m", "engine", "bench", "--workers", "1", "--users", "5"),
        *("--concurrency", "5", "--flash-requests", "200", "--flash-seats", "40"),
        *("--spread-requests", "200", "--json", str(tmp_path / "bench.json")),
    ]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    runs = report["results"]["1"]
    for scenario, seats in (("flash", 40), ("spread", 10000)):
        for target in ("ceiling", "engine"):
            fig = runs[scenario][target]
            assert fig["requests"] == 200 and fig["errors"] == 0, (scenario, target, fig)
            assert fig["bookings_201"] + fig["conflicts_409"] == 200, (scenario, target)
            assert 0 < fig["bookings_201"] <= seats and fig["problems"] == [], (scenario, target)
        assert runs[scenario]["engine"]["persistence_drained"]
        assert any("PostgreSQL" in c for c in runs[scenario]["engine"]["verified"])
    assert "| flash | requests/s |" in done.stdout and "1 API process(es):" in done.stdout
    assert len(list((data_dir / "bench-plots").glob("*.png"))) == 4
    # Everything it started is gone: its Redis, its PostgreSQL, its API, worker and ceiling.
    left = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


def _fig(rps: float, p99: float = 10.0) -> dict[str, Any]:
    return {
        "requests_per_s": rps,
        "bookings_per_s": rps,
        "p99_ms": p99,
        "requests": 10000,
        "errors": 0,
        "problems": [],
        "lag_max_s": 0.1,
        "persistence_lag_s": 0.05,
        "persistence_drained": True,
    }


def test_targets_are_judged_and_a_disturbed_ceiling_is_flagged() -> None:
    results = {
        2: {
            "flash": {"ceiling": _fig(8000), "engine": _fig(7000, p99=30)},
            "spread": {"ceiling": _fig(5000), "engine": _fig(7000)},
        }
    }
    text = "\n".join(targets_report(results))
    assert "spread 7000 bookings/s = 31.8x to 63.6x the reference" in text
    assert "target 30x: met against 220/s, met against 110/s" in text
    assert "spread 1.40 of the ceiling; target 0.70: met" in text
    assert "p99 30.0 ms: MISSED" in text  # flash
    assert "WARNING: spread: the engine ran 1.40x its ceiling" in text
    assert "WARNING: flash" not in text
