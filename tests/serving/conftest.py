"""Real services for the serving tests: a redis-server of our own (or REDIS_URL),
and real `quakescan worker` processes (Celery prefork) against it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process on a free port, optionally with append-only persistence."""

    def __init__(self, tmp: Path, port: int | None = None, appendonly: bool = False) -> None:
        self.tmp, self.port, self.appendonly = tmp, port or free_port(), appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(
                "redis-server is not installed (apt-get install redis-server), or set REDIS_URL"
            )
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.tmp),
            "--save",
            "",
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """REDIS_URL when given, else a redis-server of the suite's own on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv.url
    srv.stop()


@pytest.fixture()
def clean_redis(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    yield redis_url
    r.flushdb()


def service_env(broker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAKESCAN_")}
    env.update(
        QUAKESCAN_BROKER_URL=broker,
        QUAKESCAN_RESULT_BACKEND=broker.rsplit("/", 1)[0] + "/1",
        QUAKESCAN_REDIS_URL=broker,
        QUAKESCAN_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


class WorkerProcess:
    """`quakescan worker` as operators run it: a Celery prefork main process and its children."""

    def __init__(
        self, broker: str, log: Path, concurrency: int = 2, metrics_port: int = 0, **env: str
    ) -> None:
        self.broker, self.log_path, self.concurrency = broker, log, concurrency
        self.metrics_port = metrics_port
        self.env = service_env(broker, **env)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> WorkerProcess:
        self.log = open(self.log_path, "ab")
        cmd = [
            sys.executable,
            "-m",
            "quakescan.serving.cli",
            "worker",
            "-c",
            str(self.concurrency),
            "--metrics-port",
            str(self.metrics_port),
            "-n",
            f"test{os.getpid()}-{time.time_ns()}@%h",
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if b"ready." in self.log_path.read_bytes() and len(self.children()) >= self.concurrency:
                return self
            time.sleep(0.2)
        raise RuntimeError(
            f"worker not ready in {timeout_s} s:\n{self.log_path.read_text()[-3000:]}"
        )

    def children(self) -> list[int]:
        if self.proc is None:
            return []
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(x) for x in out.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def worker_module(redis_url, tmp_path_factory):
    """Two real worker processes shared by a module's tests (Redis flushed per test)."""
    w = WorkerProcess(redis_url, tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield w
    w.stop()
