"""`python -m engine serve --workers N` (and `run`) as a real process tree: Ctrl-C in a terminal
(SIGINT to the whole foreground process group) stops every process cleanly with exit status 0, a
second signal kills what is still stopping, a killed API process is replaced, and one that
cannot start makes the supervisor give up."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from engine.settings import Settings
from tests.storm import START_TIMEOUT_S, free_port, processes_marked

ROOT = Path(__file__).resolve().parent.parent


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # the fields after the command, which is in parentheses and may hold spaces
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def listening(pid: int, port: int) -> bool:
    """Whether the process holds a socket listening on 127.0.0.1:port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it only waits for its parent to read its status.
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _urls(settings: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
    }


async def _start(argv: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """`python -m engine ARGV` in a session of its own (as a terminal would run it), its output
    in `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "engine", *argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


@pytest.fixture(params=[["serve", "--workers", "2"]], ids=lambda argv: " ".join(argv))
async def two_workers(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """(supervisor, port) of `python -m engine serve --workers 2` (or the command the test
    parametrises it with: two children either way), in a session of its own, as a terminal
    would run it; killed afterwards whatever the test did."""
    port = free_port()
    listeners = 2 if request.param[0] == "serve" else 1  # `run`: the API and the worker
    env = {**os.environ, **_urls(settings), "PORT": str(port), "LOG_LEVEL": "WARNING"}
    proc = await _start(request.param, env, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with fresh_connections() as session:
            while (
                len(kids := children_of(proc.pid)) < 2
                or sum(listening(pid, port) for pid in kids) < listeners
                or not await _live(session, port)
            ):
                assert proc.returncode is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                await asyncio.sleep(0.1)
        yield proc, port
    finally:
        for pid in children_of(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def fresh_connections() -> aiohttp.ClientSession:
    """A new connection per request: a kept-alive one to a killed process would be reset."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=1)
    )


async def _live(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/health/live") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


@pytest.mark.parametrize(
    "two_workers",
    [["serve", "--workers", "2"], ["run"]],  # run: the API and the worker
    ids=["serve --workers 2", "run"],
    indirect=True,
)
async def test_ctrl_c_stops_every_process_with_status_0(
    two_workers: tuple[asyncio.subprocess.Process, int],
) -> None:
    supervisor, _port = two_workers
    workers = children_of(supervisor.pid)
    os.killpg(supervisor.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    assert await asyncio.wait_for(supervisor.wait(), 15) == 0
    assert not any(alive(pid) for pid in workers), workers


async def test_a_stop_right_after_a_child_died_is_still_clean(
    two_workers: tuple[asyncio.subprocess.Process, int],
) -> None:
    """A child killed by someone else just before the SIGTERM: not an error of the stop."""
    supervisor, _port = two_workers
    os.kill(min(children_of(supervisor.pid)), signal.SIGKILL)
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(supervisor.wait(), 15) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_a_single_api_process_stops_cleanly_on_sigterm_or_sighup(
    settings: Settings, tmp_path: Path, signum: int
) -> None:
    """`serve` without --workers runs no supervisor: SIGHUP (a terminal closing) stops it
    gracefully too, exit 0."""
    port = free_port()
    env = {**os.environ, **_urls(settings), "PORT": str(port), "LOG_LEVEL": "WARNING"}
    proc = await _start(["serve"], env, tmp_path / "serve.log")
    try:
        async with fresh_connections() as session:
            for _ in range(int(START_TIMEOUT_S * 10)):
                if await _live(session, port):
                    break
                assert proc.returncode is None, (tmp_path / "serve.log").read_text()
                await asyncio.sleep(0.1)
        proc.send_signal(signum)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_api_process_is_replaced(
    two_workers: tuple[asyncio.subprocess.Process, int],
) -> None:
    """One API process killed: the supervisor starts another, as a process manager would, and
    the port keeps serving meanwhile (the other process shares it)."""
    supervisor, port = two_workers
    first, second = sorted(children_of(supervisor.pid))
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + START_TIMEOUT_S
    async with fresh_connections() as session:
        assert await _live(session, port)  # the other one answers at once
        while len(now := children_of(supervisor.pid) - {first}) < 2 or not all(
            listening(pid, port) for pid in now
        ):
            assert time.monotonic() < deadline, now
            await asyncio.sleep(0.1)
        assert second in now and supervisor.returncode is None
        # The new one serves on its own too, once the other is gone.
        os.kill(second, signal.SIGKILL)
        assert await _live(session, port)


async def test_an_api_process_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """PostgreSQL refuses every connection: every API process exits at start. The supervisor
    tries a few times, then gives up with a non-zero status instead of looping."""
    env = {
        **os.environ,
        "PORT": str(free_port()),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing-listens-here",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "JWT_SECRET": "a-secret-long-enough-for-the-settings",
    }
    proc = await _start(["serve", "--workers", "2"], env, tmp_path / "serve.log")
    try:
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code != 0
    log = (tmp_path / "serve.log").read_text()
    assert "times in a row at start: stopping" in log, log[-3000:]
    assert "SIGTERM" not in log  # it stopped by itself: no signal to tell of


@pytest.mark.parametrize("command", [["serve", "--workers", "2"], ["serve"], ["run"]])
async def test_a_taken_port_is_refused_at_once_and_named(
    settings: Settings, command: list[str]
) -> None:
    """Not a crash loop of API processes, nor blamed on PostgreSQL or Redis."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PORT": str(port), **_urls(settings)}
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "engine", *command),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in err.decode()
    assert b"PostgreSQL" not in err and b"starting it again" not in err and b"API on" not in out


async def test_a_second_signal_kills_what_is_still_stopping(
    two_workers: tuple[asyncio.subprocess.Process, int],
) -> None:
    supervisor, port = two_workers
    workers = children_of(supervisor.pid)
    # A request in flight that keeps the graceful stop waiting (shutdown_timeout is 10 s)...
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/auth/login/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    supervisor.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert supervisor.returncode is None
    started = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)  # ...so the second one ends it at once
    await asyncio.wait_for(supervisor.wait(), 5)
    assert time.monotonic() - started < 3
    assert not any(alive(pid) for pid in workers), workers
    assert supervisor.returncode == 128 + signal.SIGKILL  # as a shell tells a killed child
    writer.close()


@pytest.mark.parametrize("attempt", [1, 2, 3])
async def test_a_signal_while_the_children_start_leaves_none_behind(
    settings: Settings, tmp_path: Path, attempt: int
) -> None:
    """SIGTERM as soon as the first child exists, while the others are being started."""
    mark = f"SUPERVISOR_TEST_MARK_{os.getpid()}_{attempt}"
    env = {**os.environ, **_urls(settings), "PORT": str(free_port()), mark: "1"}
    proc = await _start(["serve", "--workers", "12"], env, tmp_path / "serve.log")
    for _ in range(10_000):  # 10 s at most
        if children_of(proc.pid) or proc.returncode is not None:
            break
        await asyncio.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    for _ in range(100):  # children stopping: 10 s at most
        if not processes_marked(mark):
            break
        await asyncio.sleep(0.1)
    assert processes_marked(mark) == [], (tmp_path / "serve.log").read_text()[-2000:]
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]


@pytest.mark.parametrize("workers", ["0", "-1", "65"])
def test_a_number_of_workers_out_of_range_is_refused(workers: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--workers", workers],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--workers: must be from 1 to 64" in done.stderr
