"""Network coincidence association on hand-made detections with known answers."""

from __future__ import annotations

import json
import random

import obspy
import pytest
from obspy import UTCDateTime

from quakescan.detector.associate import (
    NetworkEvent,
    associate,
    network_event_id,
    write_network_quakeml,
)
from quakescan.detector.catalog import Detection
from quakescan.detector.refcatalog import read_reference

T0 = UTCDateTime("2010-09-01T07:30:00Z")


def det(
    station: str, peak_s: float, prob: float = 0.9, label: str = "earthquake", prefix: str = "HH"
) -> Detection:
    return Detection(
        station=station,
        channel_prefix=prefix,
        start=T0 + peak_s - 2.0,
        end=T0 + peak_s + 8.0,
        peak_time=T0 + peak_s,
        peak_probability=prob,
        label=label,
        model="convnetquake",
        model_version="1.0",
    )


@pytest.fixture
def three_events() -> list[Detection]:
    """Event at 100 s on A, B, C; a lone detection at 200 s on A; event at 300 s on A, B."""
    return [
        det("YA.A.00", 100.0, 0.95),
        det("YA.B.00", 101.0, 0.80),
        det("YA.C.00", 102.5, 0.70),
        det("YA.A.00", 200.0, 0.99),
        det("YA.A.00", 300.0, 0.90),
        det("YA.B.00", 303.0, 0.60),
    ]


def summary(events: list[NetworkEvent]) -> list[tuple[float, list[str]]]:
    return [(ev.time - T0, ev.stations) for ev in events]


def test_k2_keeps_events_seen_by_two_stations(three_events):
    events = associate(three_events, min_stations=2, tolerance_s=3.0)
    assert summary(events) == [(100.0, ["YA.A", "YA.B", "YA.C"]), (300.0, ["YA.A", "YA.B"])]
    first = events[0]
    assert first.n_stations == 3
    assert first.probability == pytest.approx(0.95)
    assert first.mean_probability == pytest.approx((0.95 + 0.80 + 0.70) / 3)
    assert first.start == T0 + 98.0 and first.end == T0 + 110.5
    assert [d.station for d in first.detections] == ["YA.A.00", "YA.B.00", "YA.C.00"]


def test_k3_keeps_only_the_three_station_event(three_events):
    events = associate(three_events, min_stations=3, tolerance_s=3.0)
    assert summary(events) == [(100.0, ["YA.A", "YA.B", "YA.C"])]


def test_k1_makes_every_group_an_event(three_events):
    events = associate(three_events, min_stations=1, tolerance_s=3.0)
    assert [ev.time - T0 for ev in events] == [100.0, 200.0, 300.0]


def test_tolerance_is_measured_from_the_first_member_inclusive(three_events):
    # C peaks 2.5 s after A: out at 2.4 s, in at exactly 2.5 s
    assert associate(three_events, 3, tolerance_s=2.4) == []
    assert len(associate(three_events, 3, tolerance_s=2.5)) == 1
    # B at 303 is 3 s after A at 300: in at exactly 3 s, out just below
    assert [t for t, _ in summary(associate(three_events, 2, tolerance_s=3.0))] == [100.0, 300.0]
    assert [t for t, _ in summary(associate(three_events, 2, tolerance_s=2.999))] == [100.0]


def test_groups_are_fixed_windows_not_chains():
    # each detection is 2 s after the previous one; a chain with 3 s links would make one
    # four-station event, the window from the first member makes two
    detections = [det("YA.A.", 0.0), det("YA.B.", 2.0), det("YA.C.", 4.0), det("YA.D.", 6.0)]
    events = associate(detections, min_stations=2, tolerance_s=3.0)
    assert summary(events) == [(0.0, ["YA.A", "YA.B"]), (4.0, ["YA.C", "YA.D"])]


def test_one_detection_per_station_the_most_probable():
    detections = [
        det("YA.A.00", 10.0, 0.70),
        det("YA.A.10", 10.5, 0.95, prefix="EH"),  # same NET.STA, other location and channel
        det("YA.B.00", 11.0, 0.80),
    ]
    (event,) = associate(detections, min_stations=2, tolerance_s=3.0)
    assert event.stations == ["YA.A", "YA.B"]
    assert [d.peak_probability for d in event.detections] == [0.95, 0.80]
    assert event.time == T0 + 10.5  # the kept members' earliest peak
    # two detections at one station are one station: not enough for k=2
    assert associate(detections[:2], min_stations=2, tolerance_s=3.0) == []


def test_duplicate_ids_do_not_count_twice():
    a = det("YA.A.", 10.0)
    assert associate([a, a, det("YA.B.", 11.0)], 2, 3.0)[0].n_stations == 2
    assert associate([a, a], 2, 3.0) == []


def test_label_is_the_majority_ties_go_to_the_highest_probability():
    majority = [
        det("YA.A.", 0.0, 0.6, "tremor"),
        det("YA.B.", 0.5, 0.6, "tremor"),
        det("YA.C.", 1.0, 0.99),
    ]
    assert associate(majority, 2, 3.0)[0].label == "tremor"
    tie = [det("YA.A.", 0.0, 0.6, "tremor"), det("YA.B.", 0.5, 0.99, "earthquake")]
    assert associate(tie, 2, 3.0)[0].label == "earthquake"


def test_order_independence(three_events):
    extra = [det("YA.A.10", 100.2, 0.5), det("YA.D.", 301.0, 0.85), det("YA.C.", 302.9, 0.4)]
    detections = three_events + extra
    want = associate(detections, min_stations=2, tolerance_s=3.0)
    assert len(want) == 2
    for seed in range(20):
        shuffled = detections[:]
        random.Random(seed).shuffle(shuffled)
        got = associate(shuffled, min_stations=2, tolerance_s=3.0)
        assert [e.to_dict() for e in got] == [e.to_dict() for e in want]


def test_ids_are_stable_and_follow_the_members(three_events):
    a = associate(three_events, 2, 3.0)
    b = associate(list(reversed(three_events)), 2, 3.0)
    assert [e.id for e in a] == [e.id for e in b]
    assert a[0].id != a[1].id
    assert a[0].id == network_event_id(d.id for d in reversed(a[0].detections))
    fewer = associate(three_events[:2] + three_events[3:], 2, 3.0)  # C missing
    assert fewer[0].id != a[0].id


def test_to_dict_is_json_ready(three_events):
    event = associate(three_events, 3, 3.0)[0]
    doc = json.loads(json.dumps(event.to_dict()))
    assert doc["time"] == "2010-09-01T07:31:40.000000Z"
    assert doc["n_stations"] == 3 and doc["stations"] == ["YA.A", "YA.B", "YA.C"]
    assert doc["label"] == "earthquake" and doc["probability"] == 0.95
    assert [d["id"] for d in doc["detections"]] == [d.id for d in event.detections]


def test_bad_arguments_are_refused(three_events):
    with pytest.raises(ValueError, match=r"min_stations \(0\) must be an integer >= 1"):
        associate(three_events, min_stations=0)
    with pytest.raises(ValueError, match=r"tolerance_s \(-1\.0\)"):
        associate(three_events, tolerance_s=-1.0)
    assert associate([], 2, 3.0) == []


def test_network_events_write_to_quakeml_for_obspy(tmp_path, three_events):
    events = associate(three_events, 2, 3.0)
    path = write_network_quakeml(events, tmp_path / "network.xml")
    cat = obspy.read_events(str(path))
    assert len(cat) == 2
    assert [len(ev.picks) for ev in cat] == [3, 2]
    assert events[0].id in str(cat[0].resource_id)
    assert cat[0].event_type == "earthquake"
    assert cat[0].extra["n_stations"]["value"] == "3"
    assert cat[0].picks[1].waveform_id.get_seed_string() == "YA.B.00.HH?"
    # and the picks read back as a per-station reference
    ref = read_reference(path)
    assert [(t.station, t.time - T0) for t in ref.times] == [
        ("YA.A", 100.0),
        ("YA.B", 101.0),
        ("YA.C", 102.5),
        ("YA.A", 300.0),
        ("YA.B", 303.0),
    ]
