"""Command line: serve, worker, migrate, createsuperuser, run (everything), demo, check,
reconcile, loadtest, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from engine.settings import Settings, SettingsError, load_settings

log = logging.getLogger("engine")


def _setup_logging(level: str) -> None:
    from engine.logs import setup_logging

    setup_logging(level, json_lines=os.environ.get("LOG_FORMAT", "json") != "text")


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port (taken, say), found before anything starts
    rather than as a supervisor's crash loop; None when it can."""
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        return (
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another server is there? stop it, or set PORT / HOST)"
        )
    return None


MAX_WORKERS = 64


def _workers(text: str) -> int:
    """--workers, checked while the arguments are read (before any server starts)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_WORKERS}")
    return n


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    if not args.reuse_port and (problem := port_problem(settings.host, settings.port)):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.workers > 1:
        return _serve_many(args.workers, settings)
    from aiohttp import web

    from engine.app import create_app, freeze_heap

    _use_uvloop()
    app = create_app(settings)
    app.on_startup.append(freeze_heap)
    # run_app stops gracefully on SIGINT and SIGTERM; a terminal closing (SIGHUP) too.
    signal.signal(signal.SIGHUP, lambda *_: signal.raise_signal(signal.SIGTERM))
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=args.reuse_port,
        access_log=None,
        print=lambda *_: None,
        shutdown_timeout=10,
    )
    return 0


def _serve_many(workers: int, settings: Settings) -> int:
    """One process per core, sharing the port (SO_REUSEPORT)."""
    log.info("serving with %s processes", workers)
    return _supervise([["serve", "--reuse-port"]] * workers, _children_env(settings))


def _children_env(settings: Settings) -> dict[str, str]:
    """The supervised children's environment: the servers found or started already, so that no
    child starts, or registers with, an embedded server itself (a child stopped while pgserver
    rewrote its file of handles left it empty, and the data folder unusable)."""
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", settings.database_url)
    env.setdefault("REDIS_URL", settings.redis_url)
    env.setdefault("JWT_SECRET", settings.jwt_secret)
    return env


# A child that ends this soon after it started, this many times in a row, will not come up
# (a port taken, a setting wrong): the supervisor stops instead of restarting it for ever.
QUICK_EXIT_S = 10.0
QUICK_EXITS_TO_GIVE_UP = 3


class _Child:
    """A `python -m <module>` child in a process group of its own: Ctrl-C in the terminal reaches
    only the supervisor, which stops each child with one SIGTERM (a child that got the
    terminal's SIGINT and then the supervisor's SIGTERM was interrupted in its shutdown, and
    exited 1)."""

    def __init__(self, module: str, argv: list[str], env: dict[str, str] | None) -> None:
        self.module, self.argv, self.env = module, argv, env
        self.quick_exits = 0
        self.start()

    def start(self) -> None:
        self.started = time.monotonic()
        self.told = False  # sent SIGTERM
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.argv], env=self.env, process_group=0
        )

    @property
    def name(self) -> str:
        return f"{self.module} {' '.join(self.argv)} (pid {self.proc.pid})"


def _supervise(
    commands: list[list[str]], env: dict[str, str] | None = None, module: str = "engine"
) -> int:
    """Run one child per command until a signal; a child that dies is started again (a crashed
    API process is replaced, as a process manager would), unless it keeps dying at once. The
    first SIGINT, SIGTERM or SIGHUP stops the children gracefully; a second one kills them."""
    children: list[_Child] = []
    stopping = False
    announced = False  # the stop logged
    signals: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        signals.append(signum)
        halt(kill=len(signals) > 1)

    def halt(kill: bool = False) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.proc.poll() is None and (kill or not child.told):
                child.told = True
                child.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)

    # Before the first child: a signal while they start must not leave any of them behind.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    for argv in commands:
        if stopping:
            break
        children.append(_Child(module, argv, env))
    if stopping:
        halt()  # one that started while the signal was being handled
    code = 0
    while children:
        if signals and not announced:  # logged here: the handler may have interrupted a log call
            announced = True
            log.info("%s: stopping %s", signal.Signals(signals[0]).name, _names(children))
        for child in list(children):
            rc = child.proc.poll()
            if rc is None:
                continue
            if stopping:
                children.remove(child)
                # What counts: a child that failed its own graceful stop, or one the second
                # signal killed; not one stopped by our SIGTERM before it could handle it, nor
                # one killed by someone else just before the stop (it would have been replaced).
                if rc > 0 or (rc == -signal.SIGKILL and len(signals) > 1):
                    code = code or _status(rc)
                continue
            quick = time.monotonic() - child.started < QUICK_EXIT_S
            child.quick_exits = child.quick_exits + 1 if quick else 0
            if child.quick_exits >= QUICK_EXITS_TO_GIVE_UP:
                log.error(
                    "%s exited %s, %s times in a row at start: stopping",
                    child.name,
                    rc,
                    child.quick_exits,
                )
                children.remove(child)
                code = code or _status(rc) or 1
                halt()
                continue
            log.warning("%s exited %s: starting it again", child.name, rc)
            if child.quick_exits:
                time.sleep(0.5 * child.quick_exits)  # a short back-off before a retry
                if stopping:  # a signal came meanwhile
                    children.remove(child)
                    continue
            child.start()
            if stopping:  # a signal came while it started
                halt()
        try:
            signal.sigtimedwait([signal.SIGCHLD], 0.2)
        except InterruptedError:
            pass
    if signals:
        if not announced:
            log.info("%s: stopping", signal.Signals(signals[0]).name)
        log.info("stopped" if code == 0 else f"stopped, exit {code}")
    return code


def _status(rc: int) -> int:
    """A child's return code as an exit status: killed by signal N is 128 + N, as a shell says."""
    return 128 - rc if rc < 0 else rc


def _names(children: list[_Child]) -> str:
    return ", ".join(child.name for child in children)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import redis.exceptions

    from worker.settings import create_worker

    _use_uvloop()
    while True:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            create_worker(settings).run()
            return 0
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            # arq's loop ends when Redis goes away: start a new worker once it is back. The
            # records it did not persist are still pending in Redis (or lost with Redis itself).
            log.warning("worker lost Redis (%r); restarting in 1 s", exc)
            time.sleep(1)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from engine.db import migrate

    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_createsuperuser(settings: Settings, args: argparse.Namespace) -> int:
    from engine.auth import create_user, password_problems
    from engine.db import create_pool

    password = os.environ.get("BOOKING_SUPERUSER_PASSWORD")
    if not password:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Password (again): "):
            print("error: passwords do not match", file=sys.stderr)
            return 2
    problems = password_problems(password, args.username)
    if problems:
        print("error: " + " ".join(problems), file=sys.stderr)
        return 2

    async def create() -> bool:
        pool = await create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            row = await create_user(
                pool, args.username, args.email, password, settings.bcrypt_rounds, is_admin=True
            )
            return row is not None
        finally:
            await pool.close()

    if not asyncio.run(create()):
        print(f"error: username {args.username!r} is taken", file=sys.stderr)
        return 2
    print(f"superuser {args.username!r} created")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from engine.demo import load_demo

    loaded = asyncio.run(load_demo(settings.database_url))
    print("demo catalog loaded" if loaded else "catalog not empty: demo not loaded")
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Everything: migrate, demo catalog if empty, then the API and the worker until Ctrl-C."""
    if problem := port_problem(settings.host, settings.port):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    cmd_migrate(settings, args)
    cmd_demo(settings, args)
    env = _children_env(settings)
    print(f"API on http://{settings.host}:{settings.port}/  (docs: /swagger/)  Ctrl-C stops")
    return _supervise([["serve"], ["worker"]], env)


async def _reconcile_main(settings: Settings, *, repair: bool) -> int:
    """`check` (repair=False) or `reconcile`: compare every loaded show with PostgreSQL."""
    from engine import reconcile
    from engine.app import redis_client
    from engine.db import create_pool
    from engine.seats import Scripts

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    redis = redis_client(settings.redis_url, max_connections=4)
    try:
        report = await reconcile.check(redis, pool)
        if not repair:
            for diff in report.differences:
                print(diff.describe())
            print(report.summary())
            return 1 if report.differences or report.stuck else 0
        repaired = await reconcile.repair(redis, pool, Scripts(redis), report.differences)
        for line in repaired:
            print(line)
        print(f"found {report.summary()}; repaired as above")
        return 0
    finally:
        await redis.aclose()
        await pool.close()


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Print each difference between Redis and PostgreSQL; exit 1 if there is any (or if a
    booking has been pending for over STUCK_AFTER_S)."""
    return asyncio.run(_reconcile_main(settings, repair=False))


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Repair every difference between Redis and PostgreSQL (PostgreSQL wins) and say which."""
    return asyncio.run(_reconcile_main(settings, repair=True))


def cmd_stop_embedded(settings: Settings, args: argparse.Namespace) -> int:
    from engine.embedded import stop_embedded

    stopped = stop_embedded(settings.data_dir)
    print(
        "stopped " + " and ".join(stopped) if stopped else f"nothing running in {settings.data_dir}"
    )
    return 0


def _as_ctrl_c(signum: int, _frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def stops_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (a terminal closing) handled as Ctrl-C: inside asyncio.run its SIGINT
    handler cancels the run, so every `finally` runs and every child process is stopped (a
    task interrupted by an exception raised mid-write would leave asyncio logging it)."""
    previous = {s: signal.signal(s, _as_ctrl_c) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_loadtest(settings: Settings, args: argparse.Namespace) -> int:
    """Drive a server that speaks the contract; print figures, verify, exit 1 if broken."""
    from engine.loadtest import Config, config_problem, run

    config = Config(
        url=args.url,
        scenario=args.scenario,
        requests=args.requests,
        duration=args.duration,
        concurrency=args.concurrency,
        users=args.users,
        seed=args.seed,
        admin_user=args.admin_user,
        admin_password=args.admin_password,
        shows=args.show or [],
        own_shows=args.own_shows,
        seats=args.seats,
        show_count=args.shows,
        auth_url=args.auth_url,
        database_url=args.database_url,
        json_path=args.json,
        plot_path=args.plot,
        client_ceiling=args.client_ceiling,
    )
    problem = config_problem(config)  # before anything is sent
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    _use_uvloop()
    with stops_like_ctrl_c():
        code, _ = asyncio.run(run(config))
    return code


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """The ceiling (bare claim handler) and our engine, flash and spread, side by side."""
    from engine.bench import bench

    with stops_like_ctrl_c():
        return bench(args)


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0 or action.help is None:
            return action.help
        return super()._get_help_string(action)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the API")
    serve.add_argument("--workers", type=_workers, default=1, help="processes sharing the port")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("worker", help="run the arq worker that persists bookings")
    sub.add_parser("migrate", help="apply migrations/*.sql not yet applied")
    su = sub.add_parser("createsuperuser", help="create an admin user")
    su.add_argument("--username", required=True)
    su.add_argument("--email", required=True)
    sub.add_parser("demo", help="load the demo catalog if the catalog is empty")
    sub.add_parser("run", help="migrate, demo catalog, API and worker (what `make run` does)")
    sub.add_parser("check", help="list differences between Redis and PostgreSQL (exit 1 if any)")
    sub.add_parser("reconcile", help="repair differences between Redis and PostgreSQL")
    sub.add_parser("stop-embedded", help="stop the embedded PostgreSQL and Redis servers")
    defaults = _ShowDefaults
    lt = sub.add_parser(
        "loadtest",
        help="load-test a server that speaks the contract",
        description="Drive a server that speaks the contract, print its figures, then verify "
        "the bookings. Scenarios: flash (one hot show, many more requests than seats), spread "
        "(many shows, each seat tried once), mixed (80% browsing, 15% booking, 5% cancelling "
        "and booking again), login (a login storm; /health/live probed meanwhile). Exit 0: "
        "verified; 1: an invariant broken; 2: not verified or not clean; 130: interrupted.",
        formatter_class=defaults,
    )
    lt.add_argument(
        "--url", required=True, help="base URL, e.g. http://127.0.0.1:8000 (http only, no https)"
    )
    lt.add_argument(
        "--scenario",
        choices=("flash", "spread", "mixed", "login"),
        default="flash",
        help="see above",
    )
    lt.add_argument("--requests", type=int, help="request budget")
    lt.add_argument("--duration", type=float, help="seconds to run (instead of --requests)")
    lt.add_argument("--concurrency", type=int, default=50, help="connections and workers")
    lt.add_argument("--users", type=int, default=50, help="users signed up before the run")
    lt.add_argument("--seed", type=int, default=1, help="seeds the random choices")
    lt.add_argument("--admin-user", help="admin to create the run's catalog with")
    lt.add_argument("--admin-password", help="that admin's password")
    lt.add_argument("--show", type=int, action="append", help="use this existing show (repeat)")
    lt.add_argument(
        "--own-shows",
        action="store_true",
        help="the --show shows are used by this run only: check their available_seats too",
    )
    lt.add_argument("--seats", type=int, help="seats per created show (flash 1000, spread 200)")
    lt.add_argument("--shows", type=int, help="shows to create (flash 1, spread 50, mixed 10)")
    lt.add_argument(
        "--auth-url", help="where to sign up and log in users (default --url; http only)"
    )
    lt.add_argument("--database-url", help="also verify the bookings in this PostgreSQL")
    lt.add_argument("--json", help="write every figure to this file")
    lt.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput and latency percentiles over time (needs the [plot] extra)",
    )
    lt.add_argument(
        "--no-client-ceiling",
        dest="client_ceiling",
        action="store_false",
        help="skip measuring the client's own ceiling (~2 s against a trivial local endpoint)",
    )
    bn = sub.add_parser(
        "bench",
        help="flash and spread: the bare claim ceiling vs our engine",
        description="make bench: flash and spread against (a) the bare claim ceiling and (b) "
        "the engine, with 1 and 2 API processes, on embedded servers of its own under "
        "BENCH_DATA_DIR (default .data-bench; DATABASE_URL and REDIS_URL are ignored, "
        "BENCH_DATABASE_URL and BENCH_REDIS_URL are used if set).",
        formatter_class=defaults,
    )
    bn.add_argument("--flash-requests", type=int, default=10000, help="flash: requests")
    bn.add_argument("--flash-seats", type=int, default=1000, help="flash: seats of its show")
    bn.add_argument(
        "--spread-requests",
        type=int,
        default=50000,
        help="spread: requests, over 50 shows, each seat tried once",
    )
    bn.add_argument("--concurrency", type=int, default=50, help="connections")
    bn.add_argument("--users", type=int, default=50, help="users booking")
    bn.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="API processes to bench with"
    )
    bn.add_argument("--plot-dir", help="where to draw each run (default .data-bench/bench-plots)")
    bn.add_argument(
        "--soak",
        type=int,
        metavar="N",
        help="instead: N requests of the mixed scenario, sampling the API's RSS and Redis memory",
    )
    bn.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)

    _setup_logging((os.environ.get("LOG_LEVEL") or "INFO").upper())
    try:
        settings = load_settings(
            start_embedded=args.command not in ("stop-embedded", "loadtest", "bench")
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    handler = globals()["cmd_" + args.command.replace("-", "_")]
    try:
        return int(handler(settings, args))
    except KeyboardInterrupt:
        # serve and run stop cleanly on Ctrl-C themselves; any other command just stops.
        print("interrupted", file=sys.stderr)
        return 130
    except (TimeoutError, OSError) as exc:
        # The usual start-up failure: a DATABASE_URL or REDIS_URL nothing answers at (a
        # refused or timed-out connection, an unknown host, a socket file not there).
        unreachable = isinstance(
            exc, TimeoutError | ConnectionError | socket.gaierror | FileNotFoundError
        )
        if unreachable and args.command not in ("loadtest", "bench", "stop-embedded"):
            print(f"error: cannot reach PostgreSQL or Redis: {exc}", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2 if args.command in ("loadtest", "bench") else 1


if __name__ == "__main__":
    sys.exit(main())
