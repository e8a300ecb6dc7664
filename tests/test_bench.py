"""`make bench` end to end at a tiny size (its figures mean nothing there: what is checked is that
it runs on a fresh machine, measures both servers, verifies every run and stops what it
started), and its report of the targets."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.bench import args_problem, bench_env, data_dir_problem, targets_report
from tests.storm import processes_marked

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A new bench data directory under .data-test (not under pytest's tmp_path: as root,
    pgserver runs PostgreSQL as its own user, who cannot enter pytest's 0700 directories)."""
    (ROOT / ".data-test").mkdir(exist_ok=True)
    made = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / ".data-test"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


def _bench_env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET")
    }
    env["BENCH_DATA_DIR"] = str(data_dir)
    return env


@pytest.mark.slow
def test_a_tiny_bench_runs_both_servers_verifies_and_stops_them(
    data_dir: Path, tmp_path: Path
) -> None:
    env = _bench_env(data_dir)
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
    assert processes_marked(str(data_dir)) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_bench_stopped_by_a_signal_stops_everything_it_started(
    data_dir: Path, signum: int
) -> None:
    """SIGTERM, or SIGHUP (the terminal closing) mid-run: every process it started stops."""
    argv = [
        *(sys.executable, "-m", "engine", "bench", "--workers", "2", "--users", "5"),
        *("--concurrency", "5", "--flash-requests", "1000000"),
    ]
    bench = subprocess.Popen(
        argv, cwd=ROOT, env=_bench_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert bench.stdout is not None
        for line in bench.stdout:  # the first run's clock has started: everything is up
            if line.startswith(b"== flash against (a) ceiling"):
                break
        time.sleep(2)
        started = processes_marked(str(data_dir))
        assert len(started) >= 6, started  # supervisor + 2 API, worker, ceiling + 2, Redis, PG
        bench.send_signal(signum)
        _, err = bench.communicate(timeout=60)
    finally:
        bench.kill()
    assert bench.returncode == 130 and b"interrupted" in err, err.decode()
    assert b"Traceback" not in err and b"never retrieved" not in err, err.decode()
    deadline = time.monotonic() + 10
    while processes_marked(str(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_marked(str(data_dir)) == []


def _args(**given: Any) -> argparse.Namespace:
    defaults = dict(
        flash_requests=10000, flash_seats=1000, spread_requests=20000, concurrency=50,
        users=50, workers=[1, 2], soak=None, json=None, plot_dir=None,
    )  # fmt: skip
    return argparse.Namespace(**{**defaults, **given})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"flash_seats": 20_000}, "--flash-seats must be at most 10,000"),
        ({"spread_requests": 10**7}, "--spread-requests must be at most 500,000"),
        ({"flash_requests": 0}, "--flash-requests must be at least 1"),
        ({"workers": [1, 100]}, "--workers must be from 1 to 32"),
        ({"concurrency": 5000}, "--concurrency must be at most 1,000"),
    ],
)
def test_bench_arguments_out_of_range_are_refused(given: dict[str, Any], message: str) -> None:
    assert args_problem(_args(**given)) == message


def test_the_bench_ignores_the_applications_servers_and_takes_its_own() -> None:
    env = bench_env(
        {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1/production",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "BENCH_DATA_DIR": "/tmp/somewhere",
        }
    )
    assert "DATABASE_URL" not in env and "REDIS_URL" not in env
    assert env["BOOKING_DATA_DIR"] == "/tmp/somewhere"
    env = bench_env(
        {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1/production",
            "BENCH_DATABASE_URL": "postgresql://postgres@127.0.0.1/bench",
            "BENCH_REDIS_URL": "redis://127.0.0.1:6379/7",
        }
    )
    assert env["DATABASE_URL"].endswith("/bench") and env["REDIS_URL"].endswith("/7")
    assert len(env["JWT_SECRET"]) >= 16  # both servers given: no embedded secret to share


def test_a_bench_data_dir_that_cannot_be_made_or_is_someone_elses_is_refused(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot create it" in (data_dir_problem(blocker / "data") or "")
    (tmp_path / "mine" / "x").mkdir(parents=True)
    assert "not a bench data directory" in (data_dir_problem(tmp_path / "mine") or "")
    assert data_dir_problem(tmp_path / "new") is None
    assert data_dir_problem(tmp_path / "new") is None  # it made it, and marked it as its own


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
    results[2]["spread"] = {"ceiling": _fig(10000), "engine": _fig(6990)}
    assert "spread 0.69 of the ceiling; target 0.70: MISSED" in "\n".join(targets_report(results))


@pytest.mark.parametrize("name", ["BENCH_DATABASE_URL", "BENCH_REDIS_URL"])
def test_a_bench_server_url_of_the_wrong_kind_is_refused_by_its_name(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "garbage")
    assert (args_problem(_args()) or "").startswith(f"{name} must start with ")
