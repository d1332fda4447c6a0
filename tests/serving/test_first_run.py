"""What a new user sees on the first run: `quakescan serve` without a config is quiet
(no kombu warnings) and leaves nothing in the temp directory; `quakescan worker`
removes the metrics folder it made. Real processes, each with a private TMPDIR."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, WorkerProcess

pytestmark = pytest.mark.slow


def quakescan(args: list[str], tmpdir: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAKESCAN_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(TMPDIR=str(tmpdir), QUAKESCAN_DEVICE="cpu", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "quakescan.serving.cli", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **popen)


def ours(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.glob("quakescan-*"))


def test_serve_on_the_sample_is_quiet_and_leaves_no_temp_folder(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = quakescan(
        ["serve", "--out-dir", str(tmp_path / "catalogs"), "--metrics-port", "0"],
        tmpdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "no --config: replaying the shipped sample" in err
    assert "detections" in out and "0 dead-lettered" in out
    assert "No hostname was supplied" not in err, err
    assert ours(tmpdir) == [], "serve left its spool (or metrics) folder in the temp directory"


def test_serve_stopped_by_sigterm_leaves_no_temp_folder(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = quakescan(
            ["serve", "--forever", "--out-dir", str(tmp_path / "catalogs"), "--metrics-port", "0"],
            tmpdir,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 120
            while not ours(tmpdir) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert ours(tmpdir), f"serve made no spool folder:\n{log.read_text()}"
            time.sleep(1.0)  # let it start feeding
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, log.read_text()
    assert "stopping gracefully" in log.read_text()
    assert ours(tmpdir) == [], log.read_text()


def test_worker_removes_the_metrics_folder_it_made(redis_url, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    w = WorkerProcess(redis_url, tmp_path / "worker.log", concurrency=1, TMPDIR=str(tmpdir))
    w.start()
    try:
        made = ours(tmpdir)
        assert len(made) == 1 and made[0].startswith("quakescan-metrics-"), made
    finally:
        w.stop()
    assert ours(tmpdir) == [], w.output()[-3000:]
