"""The whole compose stack, for real: build the image, bring the stack up,
wait for a detection in the sink's catalogs and for worker metrics in
Prometheus, then tear everything down (volumes included).

Needs a working Docker engine with the Compose v2 plugin; skipped otherwise,
with the reason. It binds 127.0.0.1:9090 and :3000 like the stack does, and
takes a few minutes (image build, then real-time replay of the sample).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
DETECTION_TIMEOUT_S = 600
CATALOGS = "/var/lib/quakescan/catalogs"

pytestmark = pytest.mark.slow


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI: the compose smoke test needs a container runtime")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        reason = (info.stderr or info.stdout).strip().splitlines()
        pytest.skip(
            "no working Docker engine (`docker info` failed: "
            f"{reason[-1] if reason else 'no output'}): compose smoke test not run"
        )
    compose = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if compose.returncode != 0:
        pytest.skip("the Docker Compose v2 plugin is missing: compose smoke test not run")
    return docker


def _prometheus_query(query: str) -> list:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_compose_stack_detects_and_reports(tmp_path):
    docker = _docker()
    project = f"quakescan-smoke-{os.getpid()}"
    env = {
        **os.environ,
        "REDIS_PASSWORD": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
        "COMPOSE_PROJECT_NAME": project,
    }
    base = [docker, "compose", "-p", project, "-f", str(COMPOSE)]

    def compose(*args: str, timeout: float = 120, check: bool = True):
        proc = subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if check:
            assert proc.returncode == 0, f"compose {' '.join(args)}:\n{proc.stderr}"
        return proc

    try:
        compose("build", "worker", timeout=1800)
        compose("up", "-d", "--wait", "--wait-timeout", "300", timeout=420)

        # a detection in the sink's daily catalogs (JSON lines)
        list_catalogs = (
            "import glob, os; "
            f"print(sum(os.path.getsize(p) for p in glob.glob('{CATALOGS}/**/*.jsonl', recursive=True)))"
        )
        deadline = time.time() + DETECTION_TIMEOUT_S
        size = 0
        while time.time() < deadline:
            proc = compose("exec", "-T", "sink", "python", "-c", list_catalogs, check=False)
            if proc.returncode == 0 and proc.stdout.strip().isdigit():
                size = int(proc.stdout.strip())
                if size > 0:
                    break
            time.sleep(10)
        assert size > 0, "no detection reached the catalogs\n" + compose("logs", check=False).stdout

        # the workers' metrics in Prometheus, and every target up
        deadline = time.time() + 120
        windows = []
        while time.time() < deadline and not windows:
            windows = _prometheus_query("sum(quakescan_windows_total) > 0")
            time.sleep(5)
        assert windows, "Prometheus has no quakescan_windows_total from the workers"
        down = _prometheus_query('up{job=~"quakescan-.*"} == 0')
        assert down == [], down
        detections = _prometheus_query("sum(quakescan_detections_total)")
        assert detections and float(detections[0]["value"][1]) > 0
    finally:
        compose("down", "-v", "--remove-orphans", timeout=300, check=False)
