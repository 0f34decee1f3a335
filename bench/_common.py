"""Helpers shared by the benchmarks: temporary instances, servers, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kamengsite.db import make_database  # noqa: E402
from kamengsite.instance import Instance  # noqa: E402
from kamengsite.migrations import upgrade  # noqa: E402


def temp_instance(database_url: str | None = None, **settings) -> Instance:
    path = Path(tempfile.mkdtemp(prefix="kamengsite-bench-"))
    url = database_url or f"sqlite:///{path / 'bench.db'}"
    instance = Instance.create(path / "instance", database_url=url, **settings)
    db = make_database(instance.database_url)
    upgrade(db)
    db.close()
    return instance


def fresh_server_database(backend: str) -> tuple[str, callable]:
    """A new empty database on the local PostgreSQL / MariaDB server; returns (url, drop)."""
    servers = {"postgresql": "postgresql://postgres@127.0.0.1:5432/test", "mysql": "mysql://root@127.0.0.1:3306/test"}
    name = f"ks_bench_{uuid.uuid4().hex[:10]}"
    admin = make_database(servers[backend])
    admin.execute_sql(f"CREATE DATABASE {name}")
    admin.close()

    def drop():
        admin = make_database(servers[backend])
        suffix = " WITH (FORCE)" if backend == "postgresql" else ""
        admin.execute_sql(f"DROP DATABASE IF EXISTS {name}{suffix}")
        admin.close()

    return servers[backend].rsplit("/", 1)[0] + "/" + name, drop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(instance: Instance, port: int, *, workers=2, threads=8, env=None, extra_args=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kamengsite", "--instance", str(instance.path), "serve",
           "--port", str(port), "--workers", str(workers), "--threads", str(threads), *extra_args]
    return start_process(cmd, port, env=env)


def start_process(cmd, port: int, *, env=None, cwd=None) -> subprocess.Popen:
    """Start a server command and wait (30 s at most) until it accepts connections on ``port``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, cwd=str(cwd or ROOT))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(map(str, cmd))}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start within 30 s")


def stop_server(proc: subprocess.Popen):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values, q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_concurrently(target, count: int) -> float:
    """Run ``target()`` in ``count`` threads at once; the wall time in seconds until all are done."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started
