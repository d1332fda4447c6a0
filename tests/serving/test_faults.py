"""Faults operators meet at 3 a.m.: a worker killed mid-chunk, the broker going
away, the sink restarting. Real Redis servers, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import obspy
import pytest
import redis
from conftest import REPO, RedisServer, WorkerProcess, service_env
from obspy import Stream
from svc_harness import Pipeline

from quakescan.detector import Detector
from quakescan.serving.feeds import Feed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reunion_and_ncal(data_dir):
    files = (
        sorted((data_dir / "reunion").glob("*.mseed"))
        + sorted((data_dir / "ncal").glob("*.mseed"))[:3]
    )
    st = Stream()
    for f in files:
        st += obspy.read(str(f))
    return files, Detector(device="cpu").detect(st)


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _key(d):
    return (d.id, str(d.start), str(d.end), d.peak_probability, d.label)


def test_worker_killed_mid_chunk_loses_nothing_and_duplicates_nothing(tmp_path, reunion_and_ncal):
    files, local = reunion_and_ncal
    (tmp_path / "r").mkdir()
    srv = RedisServer(tmp_path / "r").start()
    w = WorkerProcess(srv.url, tmp_path / "w.log", concurrency=2).start()
    try:
        # Long chunks (10 minutes of windows) so a task is surely running when we strike.
        p = Pipeline(srv.url, tmp_path, files, chunk_s=300.0)
        p.start_sink()
        feeder = threading.Thread(target=p.feed_all, daemon=True)
        feeder.start()
        killed = []
        deadline = time.time() + 60
        last = {pid: _cpu_ticks(pid) for pid in w.children()}
        while time.time() < deadline and len(killed) < 2:
            time.sleep(0.05)
            for pid in w.children():
                now, before = _cpu_ticks(pid), last.get(pid)
                last[pid] = now
                # A child burning CPU right now is running a chunk (idle children sleep).
                if before is not None and now - before >= 2 and pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    last.pop(pid, None)
                    time.sleep(0.5)
                    break
        feeder.join(120)
        p.wait_drained(180)
        p.stop_sink()
        out = w.output()
        ids = [d["id"] for d in p.stream_detections()]
    finally:
        w.stop()
        srv.stop()
    assert len(killed) == 2, "two workers were killed while processing a chunk"
    assert "WorkerLostError" in out or "Worker exited prematurely" in out
    got = p.detections()
    assert sorted(map(_key, got)) == sorted(map(_key, local)), (
        f"nothing lost: {sorted(set(map(_key, local)) - set(map(_key, got)))} missing, "
        f"{sorted(set(map(_key, got)) - set(map(_key, local)))} extra"
    )
    assert len({d.id for d in got}) == len(got), "nothing duplicated"
    assert len(ids) == len(set(ids)) == len(local)


class GatedFeed(Feed):
    """Replays real traces in two halves; the second half waits for ``gate``."""

    name = "gated-replay"

    def __init__(self, st: Stream, gate: threading.Event, first_done: threading.Event) -> None:
        self.st, self.gate, self.first_done = st, gate, first_done

    def run(self, emit, stop) -> None:
        pieces = []
        for tr in self.st:
            for i in range(0, tr.stats.npts, 1000):
                piece = tr.copy()
                piece.data = tr.data[i : i + 1000].copy()
                piece.stats.starttime = tr.stats.starttime + i * tr.stats.delta
                pieces.append(piece)
        pieces.sort(key=lambda p: p.stats.endtime)
        half = len(pieces) // 2
        for p in pieces[:half]:
            emit(p)
        self.first_done.set()
        self.gate.wait(60)
        for p in pieces[half:]:
            emit(p)


def test_broker_stopped_and_started_again_loses_nothing(tmp_path, reunion_and_ncal):
    files, local = reunion_and_ncal
    (tmp_path / "redis").mkdir()
    srv = RedisServer(tmp_path / "redis", appendonly=True).start()  # persistent, as deploy/ runs it
    # A chunk a worker had taken when the broker died is redelivered after the visibility
    # timeout (300 s in production; short here so the test does not wait five minutes).
    w = WorkerProcess(
        srv.url, tmp_path / "w.log", concurrency=2, QUAKESCAN_VISIBILITY_TIMEOUT_S="5"
    ).start()
    st = Stream()
    for f in files:
        st += obspy.read(str(f))
    gate, first_done, stop = threading.Event(), threading.Event(), threading.Event()
    try:
        p = Pipeline(srv.url, tmp_path, files, chunk_s=10.0)
        p.feeder.feeds = [GatedFeed(st, gate, first_done)]
        p.start_sink()
        t = threading.Thread(target=p.feeder.run, args=(stop, True), daemon=True)
        t.start()
        assert first_done.wait(60)
        time.sleep(1.0)
        srv.stop()  # the broker goes away while the feeder runs
        gate.set()  # ... and the second half of the data arrives meanwhile
        deadline = time.time() + 30
        while time.time() < deadline and len(p.feeder.spool) == 0:
            time.sleep(0.1)
        spooled = len(p.feeder.spool)
        time.sleep(1.0)
        srv.start()  # same port, same append-only file
        t.join(120)
        assert not t.is_alive()
        p.wait_drained(180)
        p.stop_sink()
    finally:
        stop.set()
        w.stop()
        srv.stop()
    assert spooled > 0, "chunks were spooled to disk while the broker was down"
    assert len(p.feeder.spool) == 0
    got = p.detections()
    assert sorted(map(_key, got)) == sorted(map(_key, local))


def test_sink_killed_and_restarted_publishes_no_duplicates(tmp_path, reunion_and_ncal):
    files, local = reunion_and_ncal
    (tmp_path / "redis").mkdir()
    srv = RedisServer(tmp_path / "redis").start()
    w = WorkerProcess(srv.url, tmp_path / "w.log", concurrency=2).start()
    env = service_env(srv.url)
    out_dir = tmp_path / "catalogs"

    def start_sink():
        log = open(tmp_path / "sink.log", "ab")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quakescan.serving.cli",
                "sink",
                "--out-dir",
                str(out_dir),
                "--metrics-port",
                "0",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    try:
        p = Pipeline(srv.url, tmp_path, files, chunk_s=10.0)
        r = redis.Redis.from_url(srv.url)
        sink = start_sink()
        feeder = threading.Thread(target=p.feed_all, daemon=True)
        feeder.start()
        kills = 0
        deadline = time.time() + 60
        while time.time() < deadline and kills < 3:
            if r.exists("quakescan:sink:progress") and r.xlen("quakescan:probabilities") > 10 * (
                kills + 1
            ):
                sink.send_signal(
                    signal.SIGKILL
                )  # no goodbye: mid-batch, acks and state possibly unwritten
                sink.wait(10)
                kills += 1
                sink = start_sink()
            time.sleep(0.2)
        feeder.join(120)
        p.wait_drained(180)
        time.sleep(0.5)
        sink.send_signal(signal.SIGTERM)
        sink.wait(20)
        stream_ids = [json.loads(f[b"data"])["id"] for _i, f in r.xrange("quakescan:detections")]
    finally:
        w.stop()
        srv.stop()
    assert kills == 3
    from quakescan.serving.sink import CatalogFiles

    got = CatalogFiles(out_dir).all()
    assert sorted(map(_key, got)) == sorted(map(_key, local))
    assert len(stream_ids) == len(set(stream_ids)) == len(local), "each detection published once"
