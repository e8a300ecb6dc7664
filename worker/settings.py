"""arq WorkerSettings: `python -m engine worker`, or `arq worker.settings.WorkerSettings`."""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import Worker, func

from engine.db import create_pool
from engine.seats import Scripts
from engine.settings import Settings, load_settings
from worker.tasks import persist_pending, reconcile

# A persistence job is small; a short timeout keeps arq's in-progress key (timeout + 10 s)
# short, so a job interrupted by a crash runs again within seconds.
JOB_TIMEOUT_S = 10


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or load_settings()
    ctx["settings"] = settings
    ctx["pg_pool"] = await create_pool(
        settings.database_url, min_size=1, max_size=4, name="booking-worker"
    )
    ctx["scripts"] = Scripts(ctx["redis"])


async def shutdown(ctx: dict[str, Any]) -> None:
    pool = ctx.get("pg_pool")
    if pool is not None:
        await pool.close()


def reconcile_cron(every_s: int) -> Any:
    return cron(
        reconcile,
        second=set(range(0, 60, every_s)),
        run_at_startup=True,
        keep_result=0,
        timeout=JOB_TIMEOUT_S,
        unique=True,
    )


class WorkerSettings:
    """The worker's shape; `python -m engine worker` adds Redis and the reconcile period."""

    # Never dropped for good: transient failures retry with backoff, and the records stay in
    # Redis until committed, so the reconciler picks up whatever a job gave up on.
    functions = [func(persist_pending, keep_result=0, max_tries=1_000_000, timeout=JOB_TIMEOUT_S)]
    cron_jobs = [reconcile_cron(5)]
    on_startup = startup
    on_shutdown = shutdown
    keep_result = 0
    max_jobs = 4
    poll_delay = 0.05
    job_timeout = JOB_TIMEOUT_S
    # On SIGTERM stop taking jobs and let the running ones commit (arq would cancel them and
    # exit 1 with a CancelledError traceback); a job never runs longer than its timeout anyway.
    job_completion_wait = JOB_TIMEOUT_S


def create_worker(settings: Settings) -> Worker:
    options = {k: v for k, v in vars(WorkerSettings).items() if not k.startswith("_")}
    options["cron_jobs"] = [reconcile_cron(settings.reconcile_interval_s)]
    return Worker(
        **options,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        ctx={"settings": settings},
    )
