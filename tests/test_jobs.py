"""Jobs that cannot run (project issue 3, item 7): a persistence job whose id was already used,
one that expired in the queue, one that failed for good. None of them may leave a confirmed
booking (a 201) out of PostgreSQL: the records stay pending in Redis until committed, and the
real worker's reconciler (every RECONCILE_INTERVAL = 1 s here) persists them.

Every test runs the real worker (`python -m engine worker`) as a subprocess against the test
PostgreSQL and Redis, and books through the real API.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine import keys
from engine.persistence import PERSIST_JOB
from engine.settings import Settings
from tests.conftest import Api, make_show
from tests.test_worker import book, running_worker, statuses

# The reconciler runs every second; a worker that is busy failing jobs gets some slack.
PERSIST_DEADLINE_S = 5.0
# The API enqueues `persist:<time_ms // bucket>`.
BUCKET_MS = Settings.persist_bucket_ms
JOB_KEY = "arq:job:"
RESULT_KEY = "arq:result:"
RETRY_KEY = "arq:retry:"
MAX_TRIES = 1_000_000  # worker/settings.py: func(persist_pending, max_tries=...)


def bucket_now() -> int:
    return int(time.time() * 1000) // BUCKET_MS


def persist_ids(first: int, last: int) -> list[str]:
    return [f"persist:{b}" for b in range(first, last + 1)]


async def book_spread(http: Api, token: str, show: int, seats: list[str]) -> dict[int, str]:
    """Book each seat in a time bucket of its own (so each one schedules a job of its own);
    every answer must be 201. Returns {booking id: "booked"}."""
    expected: dict[int, str] = {}
    for seat in seats:
        status, body = await book(http, token, show, seat)
        assert status == 201, body
        expected[body["id"]] = "booked"
        await asyncio.sleep(BUCKET_MS * 1.2 / 1000)
    return expected


async def wait_persisted(pg: asyncpg.Pool, expected: dict[int, str], what: str) -> float:
    started = time.monotonic()
    while (found := await statuses(pg)) != expected:
        if time.monotonic() - started > PERSIST_DEADLINE_S:
            missing = {k: v for k, v in expected.items() if found.get(k) != v}
            pytest.fail(f"{what}: not in PostgreSQL within {PERSIST_DEADLINE_S}s: {missing}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def wait_acknowledged(redis: Any, show: int) -> None:
    deadline = time.monotonic() + PERSIST_DEADLINE_S
    while await redis.hlen(keys.show_keys(show)[4]):
        assert time.monotonic() < deadline, "pending records were never acknowledged"
        await asyncio.sleep(0.05)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


async def wait_for_log(path: Path, pattern: str, within: float = PERSIST_DEADLINE_S) -> list[str]:
    """The worker's log messages matching `pattern`, waiting until there is at least one."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + within
    while True:
        found = [str(x["msg"]) for x in log_lines(path) if regex.search(str(x.get("msg", "")))]
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"no worker log line matches {pattern!r}:\n{log_tail(path)}")
        await asyncio.sleep(0.05)


def expired_jobs(path: Path) -> set[str]:
    """The job ids the worker logged as expired."""
    found = (re.fullmatch(r"job (persist:\d+) expired", str(x.get("msg"))) for x in log_lines(path))
    return {m.group(1) for m in found if m}


async def queued_persist_jobs(redis: Any) -> list[str]:
    return [
        m.decode()
        for m in await redis.zrange(keys.ARQ_QUEUE, 0, -1)
        if m.decode().startswith("persist:")
    ]


# --- 1. the job id was already used -----------------------------------------------------------


@pytest.mark.slow
async def test_bookings_whose_job_ids_were_already_used_reach_postgresql(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, tmp_path: Path
) -> None:
    """arq refuses (returns None for) an enqueue whose job or result key exists: every job the
    API tries in the next 30 s is refused, yet every 201 reaches PostgreSQL."""
    show = await make_show(pg, total_seats=20, title="Jobs: id already used")
    token = await http.user("jobs_used_alice")
    first = bucket_now() - 1
    last = first + 30_000 // BUCKET_MS
    ids = persist_ids(first, last)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.set(JOB_KEY + job_id, b"already used", ex=60)
                pipe.set(RESULT_KEY + job_id, b"already used", ex=60)
            await pipe.execute()
        log_path = tmp_path / "worker.log"
        async with running_worker(settings, redis, log_path):
            expected = await book_spread(http, token, show, [str(s) for s in range(1, 9)])
            assert bucket_now() < last, "booked after the window of used job ids"
            await asyncio.sleep(0.2)  # let the API's (refused) enqueues land
            # No persistence job was queued, and the used keys are untouched: the enqueues
            # really were refused.
            assert await queued_persist_jobs(redis) == []
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.get(JOB_KEY + job_id)
                assert set(await pipe.execute()) == {b"already used"}
            lag = await wait_persisted(pg, expected, "job ids already used")
            await wait_acknowledged(redis, show)
        print(f"8 bookings with refused jobs persisted {lag:.2f}s after the last 201")
    finally:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.delete(JOB_KEY + job_id, RESULT_KEY + job_id)
            await pipe.execute()


# --- 2. the job expired in the queue ----------------------------------------------------------


@pytest.mark.slow
async def test_bookings_whose_jobs_expired_in_the_queue_reach_postgresql(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, tmp_path: Path
) -> None:
    """No worker while booking; the queued jobs then expire (their job keys vanish; some queue
    entries are gone too, others stay for arq to find expired): every 201 reaches PostgreSQL
    once the worker starts."""
    show = await make_show(pg, total_seats=20, title="Jobs: expired")
    token = await http.user("jobs_expired_bob")
    expected = await book_spread(http, token, show, [str(s) for s in range(1, 9)])
    await asyncio.sleep(0.2)  # let the API's enqueues land
    queued = await queued_persist_jobs(redis)
    assert len(queued) >= 2, f"expected a persistence job per booking, got {queued}"
    for job_id in queued:
        assert await redis.exists(JOB_KEY + job_id)
    # Expired: every job key is gone (what its TTL does); half the queue entries are removed,
    # the other half stay, as after a real expiry, for the worker to find without a job.
    gone, left = queued[::2], queued[1::2]
    await redis.delete(*(JOB_KEY + job_id for job_id in queued))
    await redis.zrem(keys.ARQ_QUEUE, *gone)
    assert await statuses(pg) == {}
    log_path = tmp_path / "worker.log"
    try:
        async with running_worker(settings, redis, log_path):
            lag = await wait_persisted(pg, expected, "jobs expired in the queue")
            await wait_acknowledged(redis, show)
            # arq found each job left in the queue expired (and failed it): logged, not run.
            deadline = time.monotonic() + PERSIST_DEADLINE_S
            while (expired := expired_jobs(log_path)) != set(left):
                assert time.monotonic() < deadline, f"expired jobs logged: {expired}, not {left}"
                await asyncio.sleep(0.05)
        print(f"8 bookings whose jobs expired persisted {lag:.2f}s after the worker started")
    finally:
        await redis.zrem(keys.ARQ_QUEUE, *queued)


# --- 3. the job failed all its tries ----------------------------------------------------------

FAULT_SQL = """
CREATE TABLE test_jobs_fault (refuse boolean NOT NULL);
INSERT INTO test_jobs_fault VALUES (true);
CREATE FUNCTION test_jobs_refuse_bookings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT refuse FROM test_jobs_fault) THEN
        RAISE EXCEPTION 'test fault: bookings refused';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_jobs_refuse_bookings BEFORE INSERT OR UPDATE ON bookings
    FOR EACH ROW EXECUTE FUNCTION test_jobs_refuse_bookings();
"""
UNFAULT_SQL = """
DROP TRIGGER IF EXISTS test_jobs_refuse_bookings ON bookings;
DROP FUNCTION IF EXISTS test_jobs_refuse_bookings();
DROP TABLE IF EXISTS test_jobs_fault;
"""


@pytest.mark.slow
async def test_bookings_whose_jobs_failed_for_good_reach_postgresql(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, tmp_path: Path
) -> None:
    """PostgreSQL refuses every write with an error that is not transient (a trigger raising
    P0001): arq fails the persistence jobs for good (no retry). The records stay pending in
    Redis while it lasts; once the fault is removed, every 201 reaches PostgreSQL."""
    show = await make_show(pg, total_seats=20, title="Jobs: failed")
    token = await http.user("jobs_failed_carol")
    pending_key = keys.show_keys(show)[4]
    log_path = tmp_path / "worker.log"
    try:
        await pg.execute(FAULT_SQL)
        async with running_worker(settings, redis, log_path):
            expected = await book_spread(http, token, show, [str(s) for s in range(1, 7)])
            failed = await wait_for_log(
                log_path, rf"persist:\d+:{PERSIST_JOB} failed, RaiseError: test fault"
            )
            await asyncio.sleep(2.2)  # two more reconciler runs, failing as well
            # Nothing acknowledged while it failed: every record still pending, as booked.
            pending = {int(k): v.decode() for k, v in (await redis.hgetall(pending_key)).items()}
            assert set(pending) == set(expected)
            assert all(v.endswith("|b") for v in pending.values()), pending
            assert await statuses(pg) == {}
            cron_failures = [
                x for x in log_lines(log_path) if "reconcile failed, RaiseError" in str(x["msg"])
            ]
            await pg.execute("UPDATE test_jobs_fault SET refuse = false")
            lag = await wait_persisted(pg, expected, "jobs that failed for good")
            await wait_acknowledged(redis, show)
        print(
            f"{len(failed)} persistence jobs and {len(cron_failures)} reconciler runs failed;"
            f" 6 bookings persisted {lag:.2f}s after the fault was removed"
        )
    finally:
        await pg.execute(UNFAULT_SQL)


@pytest.mark.slow
async def test_bookings_whose_jobs_ran_out_of_tries_reach_postgresql(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, tmp_path: Path
) -> None:
    """arq's own "max retries exceeded": the jobs' try counters already stand at max_tries, so
    arq fails each job without running it. Every 201 reaches PostgreSQL all the same."""
    show = await make_show(pg, total_seats=20, title="Jobs: out of tries")
    token = await http.user("jobs_tries_dave")
    first = bucket_now() - 1
    last = first + 30_000 // BUCKET_MS
    ids = persist_ids(first, last)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.set(RETRY_KEY + job_id, MAX_TRIES, ex=60)
            await pipe.execute()
        log_path = tmp_path / "worker.log"
        async with running_worker(settings, redis, log_path):
            expected = await book_spread(http, token, show, [str(s) for s in range(1, 7)])
            assert bucket_now() < last, "booked after the window of exhausted job ids"
            lag = await wait_persisted(pg, expected, "jobs out of tries")
            await wait_acknowledged(redis, show)
            exceeded = await wait_for_log(
                log_path, rf"persist:\d+:{PERSIST_JOB} max retries {MAX_TRIES} exceeded"
            )
        print(f"{len(exceeded)} jobs ran out of tries; 6 bookings persisted {lag:.2f}s later")
    finally:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.delete(RETRY_KEY + job_id)
            await pipe.execute()
