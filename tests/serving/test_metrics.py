"""Nothing is dropped without a count: what the workers' preparation skips and what the
feeder drops show up in Prometheus with their reason, scraped from a fresh registry;
every process reports the installed quakescan version."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import Stream, Trace, UTCDateTime
from prometheus_client import CollectorRegistry, generate_latest

from quakescan.serving.bus import MemoryBus
from quakescan.serving.chunks import Chunk, stream_to_mseed
from quakescan.serving.config import load_config
from quakescan.serving.feeder import Feeder
from quakescan.serving.metrics import (
    FAILURE_REASONS,
    FEED_DROP_REASONS,
    Metrics,
    failure_reason,
)
from quakescan.serving.tasks import build_state, handle_chunk

DATA = Path(__file__).resolve().parents[1] / "data"
BKS = DATA / "ncal/BK.BKS.20170715T104920.mseed"  # 90 s, HHE HHN HHZ at 100 Hz
STEP_S, WINDOW_S = 1.0, 10.0


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker's state as `quakescan worker` builds it (real ONNX session), with an
    in-memory bus and dead-letter list and a fresh registry."""
    tmp = tmp_path_factory.mktemp("worker")
    cfg = load_config(None, {"spool_dir": str(tmp), "device": "cpu"}, env={})
    registry = CollectorRegistry()
    dead: list[dict] = []
    state = build_state(cfg, metrics=Metrics(registry), bus=MemoryBus(), deadletter=dead.append)
    return state, registry, dead


def bks_chunk(components: str, seq: int = 0, nan_samples: int = 0) -> dict:
    """A 30 s chunk of BK.BKS. (windows k_first .. k_first + 20) with these components,
    and ``nan_samples`` NaN in its vertical."""
    st = obspy.read(str(BKS))
    st = Stream([tr for tr in st if tr.stats.channel[-1] in components])
    if nan_samples:
        for tr in st:
            tr.data = tr.data.astype(np.float32)
        st.select(channel="HHZ")[0].data[500 : 500 + nan_samples] = np.nan
    t0 = UTCDateTime(int(st[0].stats.starttime.timestamp) + 1)
    st = st.slice(t0, t0 + 30)
    k_first = int(t0.timestamp)
    return Chunk(
        station="BK.BKS.",
        channel_prefix="HH",
        seq=seq,
        k_first=k_first,
        k_last=k_first + 20,
        step_s=STEP_S,
        mseed=stream_to_mseed(st),
        last_sample_time=max(tr.stats.endtime for tr in st).timestamp,
    ).to_message()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_chunk_without_its_vertical_component_is_counted_with_its_reason(worker):
    state, registry, dead = worker
    name = "quakescan_prepare_skipped_total"
    before = value(registry, name, station="BK.BKS.", reason="missing_vertical")
    out = handle_chunk(state, bks_chunk("NE"))
    # The chunk is done (the sink must not wait for it), but none of its windows ran.
    assert out["status"] == "ok" and out["windows"] == 0
    assert value(registry, name, station="BK.BKS.", reason="missing_vertical") == before + 1
    assert dead == []
    text = generate_latest(registry).decode()
    assert 'quakescan_prepare_skipped_total{reason="missing_vertical",station="BK.BKS."}' in text
    # A complete chunk adds nothing to the count.
    out = handle_chunk(state, bks_chunk("ZNE", seq=1))
    assert out["windows"] == 21
    assert value(registry, name, station="BK.BKS.", reason="missing_vertical") == before + 1


def test_nan_samples_in_a_chunk_are_counted(worker):
    state, registry, _ = worker
    labels = {"station": "BK.BKS.", "reason": "non_finite_samples"}
    before = value(registry, "quakescan_prepare_skipped_total", **labels)
    assert handle_chunk(state, bks_chunk("ZNE", seq=2, nan_samples=25))["status"] == "ok"
    after = value(registry, "quakescan_prepare_skipped_total", **labels)
    assert after - before == 25, "one count per NaN sample"


def test_failures_have_a_bounded_reason_set(worker):
    _, registry, _ = worker
    for reason in FAILURE_REASONS:  # scraped at 0 before anything fails: alerts see them
        assert registry.get_sample_value("quakescan_task_failures_total", {"reason": reason}) == 0
    assert failure_reason("corrupt_chunk") == "corrupt_chunk"
    assert failure_reason("some new exception") == "internal"


def test_a_corrupt_chunk_is_counted_under_its_reason(worker):
    state, registry, dead = worker
    msg = bks_chunk("ZNE", seq=5)
    msg["mseed_b64"] = "AAAA"
    before = value(registry, "quakescan_task_failures_total", reason="corrupt_chunk")
    assert handle_chunk(state, msg)["status"] == "failed"
    assert value(registry, "quakescan_task_failures_total", reason="corrupt_chunk") == before + 1
    assert dead[-1]["reason"] == "corrupt_chunk"


def feeder(tmp_path: Path, **kw) -> tuple[Feeder, CollectorRegistry, list[dict]]:
    registry = CollectorRegistry()
    sent: list[dict] = []
    f = Feeder(
        [],
        sent.append,
        step_s=STEP_S,
        window_s=WINDOW_S,
        chunk_s=10.0,
        metrics=Metrics(registry),
        spool_dir=tmp_path / "spool",
        **kw,
    )
    return f, registry, sent


def trace(station: str, channel: str, start: float, n: int = 1000) -> Trace:
    net, sta, loc = station.split(".")
    return Trace(
        np.arange(n, dtype=np.int32),
        header={
            "network": net,
            "station": sta,
            "location": loc,
            "channel": channel,
            "sampling_rate": 100.0,
            "starttime": UTCDateTime(start),
        },
    )


def test_the_feeder_counts_the_samples_it_drops_by_reason(tmp_path):
    f, registry, sent = feeder(tmp_path, stations=["BK.BKS."])
    name = "quakescan_feed_dropped_samples_total"
    for reason in FEED_DROP_REASONS:
        assert registry.get_sample_value(name, {"reason": reason}) == 0
    t0 = 1_500_000_000.0
    assert f.add(trace("BK.BKS.", "HHX", t0)) is None  # not Z/N/E/1/2
    assert f.add(trace("BK.BKS.", "HHX", t0 + 10)) is None
    assert value(registry, name, reason="unknown_channel") == 2000
    assert f.add(trace("BG.ACR.", "HHZ", t0, n=500)) is None  # not in [[stations]]
    assert value(registry, name, reason="unlisted_station") == 500
    # Data the feeder has already cut chunks past: re-delivered or late.
    for i in range(4):
        b = f.add(trace("BK.BKS.", "HHZ", t0 + 10 * i))
        f.cut_and_send(b)
    assert sent, "chunks were cut"
    assert f.add(trace("BK.BKS.", "HHZ", t0, n=300)) is None
    assert value(registry, name, reason="already_cut") == 300
    # Samples that are kept are not counted as dropped.
    assert sum(value(registry, name, reason=r) for r in FEED_DROP_REASONS) == 2800


def test_build_info_is_the_installed_version():
    registry = CollectorRegistry()
    Metrics(registry)
    assert registry.get_sample_value("quakescan_build_info", {"version": version("quakescan")}) == 1
