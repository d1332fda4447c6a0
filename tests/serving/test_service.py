"""The distributed service against a real Redis server and real Celery worker processes."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import obspy
import pytest
import redis
from svc_harness import Pipeline

from quakescan.detector import Detector
from quakescan.serving.app import TASK_DETECT, TASK_DETECT_MANY, make_app
from quakescan.serving.chunks import Chunk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_detector():
    return Detector(device="cpu")


def _files(data_dir):
    return sorted((data_dir / "ncal").glob("*.mseed")) + sorted(
        (data_dir / "reunion").glob("*.mseed")
    )


BKS_K0 = 1500115761  # first whole second of the BK.BKS fixture record (10:49:20.61 UTC)


def _key(d):
    return (d.id, str(d.start), str(d.end), str(d.peak_time), d.peak_probability, d.label)


@pytest.mark.parametrize("batch_chunks", [1, 32], ids=["task-per-chunk", "chunks-per-task"])
def test_distributed_path_gives_exactly_the_local_detections(
    clean_redis, worker_module, data_dir, tmp_path, local_detector, batch_chunks
):
    files = _files(data_dir)
    windows_before = local_detector.stats.windows  # the fixture's detector is shared
    local = local_detector.detect(
        obspy.read(str(data_dir / "ncal" / "*.mseed"))
        + obspy.read(str(data_dir / "reunion" / "*.mseed"))
    )
    p = Pipeline(clean_redis, tmp_path, files, chunk_s=10.0, batch_chunks=batch_chunks)
    p.start_sink()
    p.feed_all()
    p.wait_drained()
    p.stop_sink()
    got = p.detections()
    assert len(local) >= 8
    assert sorted(map(_key, got)) == sorted(map(_key, local))
    # Published once each on the Redis stream too, and the daily catalogs exist in every format.
    ids = [d["id"] for d in p.stream_detections()]
    assert sorted(ids) == sorted(d.id for d in local)
    days = {d.start.strftime("%Y-%m-%d") for d in local}
    for day in days:
        for ext in ("jsonl", "csv", "xml"):
            assert (tmp_path / "catalogs" / f"detections-{day}.{ext}").exists()
    xml = tmp_path / "catalogs" / f"detections-{sorted(days)[0]}.xml"
    assert len(obspy.read_events(str(xml))) >= 1
    # Every chunk was processed: windows counted by the sink equal the local windows.
    windows = sum(
        s.value
        for m in p.metrics.sink_windows_total.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert windows == local_detector.stats.windows - windows_before


@pytest.mark.parametrize("task", ["task-per-chunk", "chunks-per-task"])
def test_corrupt_chunk_is_dead_lettered_and_the_rest_carries_on(
    clean_redis, worker_module, data_dir, tmp_path, task
):
    r = redis.Redis.from_url(clean_redis)
    app = make_app(Pipeline(clean_redis, tmp_path, _files(data_dir)[:1]).cfg)
    good = (data_dir / "ncal" / "BK.BKS.20170715T104920.mseed").read_bytes()
    bad = Chunk(
        "BK.BKS.",
        "HH",
        0,
        1500000000,
        1500000010,
        1.0,
        b"\x00garbage, not miniSEED" * 50,
        time.time(),
    )
    ok = Chunk("BK.BKS.", "HH", 1, BKS_K0, BKS_K0 + 10, 1.0, good, time.time())
    if task == "task-per-chunk":
        app.send_task(TASK_DETECT, args=[bad.to_message()], queue="detect")
        app.send_task(TASK_DETECT, args=[ok.to_message()], queue="detect")
    else:  # the corrupt chunk shares a task with a good one: only it is dead-lettered
        app.send_task(TASK_DETECT_MANY, args=[[bad.to_message(), ok.to_message()]], queue="detect")
    deadline = time.time() + 30
    while time.time() < deadline and r.xlen("quakescan:probabilities") < 2:
        time.sleep(0.1)
    msgs = [json.loads(f[b"data"]) for _i, f in r.xrange("quakescan:probabilities")]
    by_seq = {m["seq"]: m for m in msgs}
    assert by_seq[0]["status"] == "failed" and by_seq[0]["reason"] == "corrupt_chunk"
    assert by_seq[1]["status"] == "ok" and len(by_seq[1]["k"]) == 11
    dead = [json.loads(x) for x in r.lrange("quakescan:deadletter", 0, -1)]
    assert len(dead) == 1 and dead[0]["reason"] == "corrupt_chunk"
    assert "not readable miniSEED" in dead[0]["error"]
    # The dead-letter entry keeps the original message, so an operator can inspect or replay it.
    assert base64.b64decode(dead[0]["message"]["mseed_b64"]).startswith(b"\x00garbage")


def test_pickled_message_is_refused(clean_redis, worker_module, data_dir, tmp_path):
    r = redis.Redis.from_url(clean_redis)
    app = make_app(Pipeline(clean_redis, tmp_path, _files(data_dir)[:1]).cfg)
    good = (data_dir / "ncal" / "BK.BKS.20170715T104920.mseed").read_bytes()
    evil = Chunk("BK.BKS.", "HH", 0, BKS_K0, BKS_K0 + 10, 1.0, good, time.time())
    app.conf.accept_content = ["json", "pickle"]  # the sender is willing; the worker is not
    app.send_task(TASK_DETECT, args=[evil.to_message()], queue="detect", serializer="pickle")
    ok = Chunk("BK.BKS.", "HH", 1, BKS_K0, BKS_K0 + 10, 1.0, good, time.time())
    app.send_task(TASK_DETECT, args=[ok.to_message()], queue="detect", serializer="json")
    deadline = time.time() + 30
    while time.time() < deadline and r.xlen("quakescan:probabilities") < 1:
        time.sleep(0.1)
    time.sleep(1.0)
    msgs = [json.loads(f[b"data"]) for _i, f in r.xrange("quakescan:probabilities")]
    assert [m["seq"] for m in msgs] == [1], "only the JSON message was executed"
    deadline = time.time() + 10
    while time.time() < deadline and "ContentDisallowed" not in worker_module.output():
        time.sleep(0.2)
    assert (
        "ContentDisallowed" in worker_module.output()
        or "disallowed" in worker_module.output().lower()
    )


def test_worker_exposes_metrics_from_its_processes(data_dir, tmp_path):
    from conftest import RedisServer, WorkerProcess, free_port

    srv = RedisServer(tmp_path).start()  # its own broker: no other worker takes these chunks
    redis_url = srv.url
    r = redis.Redis.from_url(redis_url)
    port = free_port()
    w = WorkerProcess(redis_url, tmp_path / "w.log", concurrency=2, metrics_port=port).start()
    try:
        app = make_app(Pipeline(redis_url, tmp_path, _files(data_dir)[:1]).cfg)
        good = (data_dir / "ncal" / "BK.BKS.20170715T104920.mseed").read_bytes()
        for seq in range(4):
            app.send_task(
                TASK_DETECT,
                args=[
                    Chunk(
                        "BK.BKS.",
                        "HH",
                        seq,
                        BKS_K0 + 20 * seq,
                        BKS_K0 + 20 * seq + 9,
                        1.0,
                        good,
                        time.time(),
                    ).to_message()
                ],
                queue="detect",
            )
        deadline = time.time() + 30
        while time.time() < deadline and r.xlen("quakescan:probabilities") < 4:
            time.sleep(0.1)
        n_windows = sum(
            len(json.loads(f[b"data"])["k"]) for _i, f in r.xrange("quakescan:probabilities")
        )
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
        )
    finally:
        w.stop()
        srv.stop()
    assert health["ok"] and health["component"] == "worker"
    samples = {}
    for line in text.splitlines():
        if line.startswith("quakescan_") and " " in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    ok = sum(
        v
        for k, v in samples.items()
        if k.startswith("quakescan_chunks_total{") and 'status="ok"' in k
    )
    assert ok == 4, samples
    windows = sum(v for k, v in samples.items() if k.startswith("quakescan_windows_total{"))
    assert windows == n_windows > 0
    assert any(
        k.startswith("quakescan_model_info{") and 'provider="CPUExecutionProvider"' in k
        for k in samples
    )
    assert any(k.startswith("quakescan_inference_seconds_count") for k in samples)
