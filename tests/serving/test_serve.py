"""`quakescan serve`: feeder, a real Celery worker and the sink in one process on Celery's
in-memory transport (no Redis), checked against the Detector on the same waveforms."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import obspy
import pytest
from click.testing import CliRunner, Result
from conftest import free_port
from obspy import Stream
from prometheus_client import CollectorRegistry

from quakescan.detector import Detector
from quakescan.detector.catalog import read_catalog
from quakescan.detector.model import OnnxModel, resolve_model_path
from quakescan.detector.sources import sample_paths
from quakescan.serving.cli import cli
from quakescan.serving.config import load_config
from quakescan.serving.feeds.files import ReplayFeed
from quakescan.serving.metrics import Metrics
from quakescan.serving.service import InProcessService

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"
UV05 = DATA / "reunion/YA.UV05.00.HHZ.2010-09-01T0728.mseed"
UV06 = DATA / "reunion/YA.UV06.00.HHZ.2010-09-01T0728.mseed"
BKS = DATA / "ncal/BK.BKS.20170715T104920.mseed"
ACR = DATA / "ncal/BG.ACR.20120825T051459.mseed"
ID = re.compile(r"\bid=([0-9a-f]{20})\b")


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """`serve` installs SIGTERM/SIGINT handlers for a graceful stop; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def read_all(paths) -> Stream:
    st = Stream()
    for p in paths:
        st += obspy.read(str(p))
    return st


def local_detections(paths) -> list:
    return Detector(device="cpu").detect(read_all(paths))


def serve(*args) -> Result:
    res = CliRunner().invoke(cli, ["serve", *map(str, args)], env={"QUAKESCAN_DEVICE": "cpu"})
    return res


def replay_config(tmp_path: Path, paths, extra: str = "", speed: float = 0.0) -> Path:
    cfg = tmp_path / "serve.toml"
    listed = ", ".join(f'"{p}"' for p in paths)
    cfg.write_text(
        f"""
[service]
spool_dir = "{tmp_path / "spool"}"
out_dir = "{tmp_path / "catalogs"}"

[[feeds]]
type = "replay"
paths = [{listed}]
speed = {speed}
{extra}
"""
    )
    return cfg


def test_serve_without_config_replays_the_sample_and_finds_what_detect_finds(tmp_path):
    out = tmp_path / "catalogs"
    res = serve("--out-dir", out, "--metrics-port", "0")
    assert res.exit_code == 0, res.output
    assert f"no --config: replaying the shipped sample ({len(sample_paths())} files)" in res.output
    want = local_detections(sample_paths())
    assert len(want) >= 3  # the sample's earthquakes, at least
    printed = ID.findall(res.output)
    assert sorted(printed) == sorted(d.id for d in want), "the same detections, each once"
    n_stations = len({tr.id.rsplit(".", 1)[0] for tr in read_all(sample_paths())})
    assert f"served {n_stations} stations" in res.output
    assert "0 dead-lettered" in res.output
    # Daily catalogs, one set per day with detections, readable by ObsPy and by quakescan.
    days = sorted({d.start.strftime("%Y-%m-%d") for d in want})
    assert sorted(p.name for p in out.glob("*.xml")) == [f"detections-{d}.xml" for d in days]
    n_events = 0
    got = []
    for day in days:
        n_events += len(obspy.read_events(str(out / f"detections-{day}.xml")))
        got += read_catalog(out / f"detections-{day}.jsonl")
        assert read_catalog(out / f"detections-{day}.csv") == read_catalog(
            out / f"detections-{day}.xml"
        )
    assert n_events == len(want)
    assert sorted(got) == sorted(want), "times and probabilities equal too"


def test_serve_with_a_replay_config_and_its_metrics_endpoint(tmp_path):
    paths = [UV06, BKS, ACR]
    port = free_port()
    seen: dict[str, tuple] = {}
    done = threading.Event()

    def probe() -> None:
        while not done.is_set() and len(seen) < 2:
            try:
                for name, path in (("health", "/healthz"), ("metrics", "/metrics")):
                    if name not in seen:
                        url = f"http://127.0.0.1:{port}{path}"
                        with urllib.request.urlopen(url, timeout=2) as r:
                            seen[name] = (r.status, r.read().decode(), done.is_set())
            except OSError:
                time.sleep(0.02)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    cfg = replay_config(tmp_path, paths)
    res = serve("--config", cfg, "--until-done", "--metrics-port", port)
    done.set()
    t.join(5)
    assert res.exit_code == 0, res.output
    want = local_detections(paths)
    assert sorted(ID.findall(res.output)) == sorted(d.id for d in want)
    assert f"catalogs in {tmp_path / 'catalogs'}/" in res.output
    got = []
    for p in (tmp_path / "catalogs").glob("*.jsonl"):
        got += read_catalog(p)
    assert sorted(d.id for d in got) == sorted(d.id for d in want)
    # /healthz and /metrics answered while the service ran.
    assert set(seen) == {"health", "metrics"}, "the endpoint did not answer"
    status, body, after = seen["health"]
    assert not after, "answered only after serve had returned"
    health = json.loads(body)
    assert status == 200 and health["ok"] is True and health["component"] == "serve"
    status, text, after = seen["metrics"]
    assert status == 200 and not after
    assert "# TYPE quakescan_feed_samples_total counter" in text
    assert 'quakescan_model_info{model="convnetquake"' in text


def test_serve_feeds_only_the_configured_stations(tmp_path):
    cfg = replay_config(tmp_path, [BKS, ACR], extra='\n[[stations]]\nid = "BK.BKS."\n')
    res = serve("--config", cfg, "--until-done", "--metrics-port", "0")
    assert res.exit_code == 0, res.output
    want = local_detections([BKS])
    assert want
    assert "BG.ACR." not in res.output, "ACR is not in [[stations]]: its data are ignored"
    assert sorted(ID.findall(res.output)) == sorted(d.id for d in want)
    assert "served 1 stations" in res.output


def metric(m, **labels) -> float:
    """Sum of a metric's samples (counters' _total, histograms' _count) matching labels."""
    total = 0.0
    for fam in m.collect():
        for s in fam.samples:
            if s.name.endswith(("_created", "_bucket", "_sum")):
                continue
            if all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_in_process_metrics_count_what_they_name(tmp_path):
    paths = [UV05, BKS, ACR]
    st = read_all(paths)
    local = Detector(device="cpu")
    want = local.detect(st)
    cfg = load_config(
        None,
        {
            "broker_url": "memory://",
            "result_backend": "cache+memory://",
            "spool_dir": str(tmp_path / "spool"),
            "out_dir": str(tmp_path / "catalogs"),
            "device": "cpu",
        },
        env={},
    )
    m = Metrics(CollectorRegistry())
    svc = InProcessService(cfg, [ReplayFeed(paths)], metrics=m)
    dets = svc.run(threading.Event(), until_done=True, timeout_s=90)
    assert sorted(d.id for d in dets) == sorted(d.id for d in want)
    chunks = sum(b.seq for b in svc.feeder.buffers.values())
    assert chunks == svc.feeder.chunks_sent > 0
    assert metric(m.windows_total) == local.stats.windows
    assert metric(m.windows_total, station="YA.UV05.00", model="convnetquake") == 591
    assert metric(m.sink_windows_total) == local.stats.windows
    assert metric(m.chunks_sent_total) == chunks
    assert metric(m.chunks_total, status="ok") == chunks
    assert metric(m.chunk_latency_seconds) == chunks, "one latency per chunk triggered"
    assert metric(m.detections_total) == len(want)
    assert metric(m.detections_total, label="earthquake", model="convnetquake") == sum(
        d.label == "earthquake" for d in want
    )
    assert metric(m.end_to_end_latency_seconds) == len(want)
    for station, sta in (("YA.UV05.00", "UV05"), ("BK.BKS.", "BKS"), ("BG.ACR.", "ACR")):
        traces = st.select(station=sta)
        assert metric(m.feed_samples_total, station=station) == sum(t.stats.npts for t in traces)
        last = max(t.stats.endtime for t in traces).timestamp
        assert metric(m.last_sample_timestamp_seconds, station=station) == pytest.approx(last)
        assert metric(m.feed_gaps_total, station=station) == 0
    assert metric(m.task_failures_total) == 0 and metric(m.deadletter_total) == 0
    info = [
        s
        for fam in m.model_info.collect()
        for s in fam.samples
        if s.value == 1 and s.name == "quakescan_model_info"
    ]
    shipped = OnnxModel(resolve_model_path(None), device="cpu").spec
    assert [s.labels for s in info] == [
        {"model": "convnetquake", "version": shipped.version, "provider": "CPUExecutionProvider"}
    ]
