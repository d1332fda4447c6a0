"""The sink's daily catalogs: JSON lines at once, CSV and QuakeML rewritten on a
timer, at a new day and when the sink stops; a detection written twice is kept once."""

from __future__ import annotations

import threading

import obspy
from obspy import UTCDateTime

from detector.catalog import Detection, read_csv, read_jsonl
from serving.bus import MemoryStream
from serving.config import ServiceConfig
from serving.metrics import Metrics
from serving.sink import CatalogFiles, MemoryDetections, MemoryState, Sink


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
        MemoryStream(),
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
