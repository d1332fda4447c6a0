"""The sink: daily catalogs (JSON lines at once, CSV and QuakeML rewritten on a
timer, at a new day and on stop; a detection written twice kept once) and the order
of a new station's chunks."""

from __future__ import annotations

import threading

import obspy
from obspy import UTCDateTime

from quakescan.detector.catalog import Detection, read_csv, read_jsonl
from quakescan.serving.bus import MemoryBus
from quakescan.serving.config import ServiceConfig
from quakescan.serving.metrics import Metrics
from quakescan.serving.sink import CatalogFiles, MemoryDetections, MemoryState, Sink


def _det(t: str, station: str = "NC.BBG.") -> Detection:
    t0 = UTCDateTime(t)
    return Detection(station, "EH", t0, t0 + 12, t0 + 4.3, 0.99, "earthquake", "convnetquake", "1")


def test_jsonl_at_once_csv_and_quakeml_when_due(tmp_path):
    cat = CatalogFiles(tmp_path, rewrite_every_s=3600.0)
    a = _det("2024-05-01T01:00:00")
    assert cat.write([a]) == [a]  # the first write of a sink is due at once
    b = _det("2024-05-01T02:00:00")
    assert cat.write([b, a]) == [b]  # a is already in the day's catalog
    day = tmp_path / "detections-2024-05-01"
    assert [d.id for d in read_jsonl(f"{day}.jsonl")] == [a.id, b.id]
    assert [d.id for d in read_csv(f"{day}.csv")] == [a.id]  # b waits for the timer
    cat.flush(due_only=True)
    assert [d.id for d in read_csv(f"{day}.csv")] == [a.id]
    cat.flush()
    assert [d.id for d in read_csv(f"{day}.csv")] == [a.id, b.id]
    assert len(obspy.read_events(f"{day}.xml")) == 2


def test_a_new_day_writes_out_the_day_before(tmp_path):
    cat = CatalogFiles(tmp_path, rewrite_every_s=3600.0)
    cat.write([_det("2024-05-01T01:00:00")])
    cat.write([_det("2024-05-01T23:59:00")])
    cat.write([_det("2024-05-02T00:00:30")])
    assert len(read_csv(tmp_path / "detections-2024-05-01.csv")) == 2
    assert not (tmp_path / "detections-2024-05-02.csv").exists()


def test_a_restarted_sink_skips_what_is_on_disk(tmp_path):
    a, b = _det("2024-05-01T01:00:00"), _det("2024-05-01T02:00:00")
    CatalogFiles(tmp_path, rewrite_every_s=0).write([a])
    again = CatalogFiles(tmp_path, rewrite_every_s=0)
    assert again.write([a, b]) == [b]
    assert len(read_jsonl(tmp_path / "detections-2024-05-01.jsonl")) == 2


def test_the_sink_completes_csv_and_quakeml_when_it_stops(tmp_path):
    from prometheus_client import CollectorRegistry

    cat = CatalogFiles(tmp_path, rewrite_every_s=3600.0)
    cat.write([_det("2024-05-01T01:00:00")])
    later = _det("2024-05-01T05:00:00")
    cat.write([later])
    sink = Sink(
        ServiceConfig(broker_url="memory://"),
        MemoryBus(),
        MemoryDetections(),
        MemoryState(),
        cat,
        Metrics(CollectorRegistry()),
    )
    stop = threading.Event()
    t = threading.Thread(target=sink.run, args=(stop,))
    t.start()
    stop.set()
    t.join(30)
    assert later.id in {d.id for d in read_csv(tmp_path / "detections-2024-05-01.csv")}


# ------------------------------------------------ the order of a new station's chunks
def _probs_msg(seq: int, k0: int, n: int = 10) -> dict:
    return {
        "status": "ok",
        "k_first": k0,
        "k_last": k0 + n - 1,
        "station": "XX.NEW.",
        "channel_prefix": "HH",
        "seq": seq,
        "k": list(range(k0, k0 + n)),
        "probs": [[0.99, 0.01]] * n,
        "last_sample_time": float(k0 + n + 9),
        "final": False,
    }


def _windows(sink) -> float:
    return sum(
        s.value
        for m in sink.metrics.sink_windows_total.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


def _sink(clock):
    from prometheus_client import CollectorRegistry

    src = MemoryBus()
    sink = Sink(
        ServiceConfig(broker_url="memory://", reorder_timeout_s=600.0),
        src,
        MemoryDetections(),
        MemoryState(),
        None,
        Metrics(CollectorRegistry()),
        clock=clock,
    )
    return src, sink


def test_a_new_station_whose_first_chunk_is_late_waits_for_it():
    """A worker died with a new station's chunk 0 while chunk 1 went through: the
    sink waits for chunk 0 rather than starting at chunk 1 (it did, after 0.5 s)."""
    now = [1000.0]
    src, sink = _sink(lambda: now[0])
    src.publish(_probs_msg(1, 10))
    sink.step(block_ms=10)
    now[0] += 30  # chunk 0 is redelivered half a minute later
    sink.step(block_ms=10)
    src.publish(_probs_msg(0, 0))
    sink.step(block_ms=10)
    assert _windows(sink) == 20, "both chunks' windows reached the trigger"


def test_a_first_chunk_that_never_comes_is_given_up_after_the_reorder_timeout():
    """A sink whose state was lost, fed from the middle of a station's sequence."""
    now = [1000.0]
    src, sink = _sink(lambda: now[0])
    src.publish(_probs_msg(500, 5000))
    sink.step(block_ms=10)
    now[0] += 300
    sink.step(block_ms=10)
    assert _windows(sink) == 0, "still waiting for the chunks before 500"
    now[0] += 301  # past reorder_timeout_s (600 s)
    sink.step(block_ms=10)
    assert _windows(sink) == 10


def test_a_feeder_that_lost_its_state_is_followed_not_dropped():
    """Sequence numbers start at 0 again (the feeder's state file was lost) with
    windows the sink has never seen: they are processed; a true redelivery is not."""
    now = [1000.0]
    src, sink = _sink(lambda: now[0])
    for seq in range(3):
        src.publish(_probs_msg(seq, 10 * seq))
    sink.step(block_ms=10)
    src.publish(_probs_msg(1, 10))  # a redelivered chunk: already in
    sink.step(block_ms=10)
    assert _windows(sink) == 30
    src.publish(_probs_msg(0, 30))  # the restarted feeder's first chunk
    src.publish(_probs_msg(1, 40))
    sink.step(block_ms=10)
    assert _windows(sink) == 50
