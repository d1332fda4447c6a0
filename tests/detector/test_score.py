"""Scoring detections against reference picks and origins: known answers by hand."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from obspy import UTCDateTime
from obspy.core.event import Catalog, Event, Origin, Pick, WaveformStreamID

from quakescan.detector.associate import associate
from quakescan.detector.catalog import Detection, write_catalog, write_quakeml
from quakescan.detector.refcatalog import ReferenceTime, read_reference
from quakescan.detector.score import score, score_cmd

T0 = UTCDateTime("2020-01-01T00:00:00Z")


def det(
    station: str, start_s: float, end_s: float, peak_s: float | None = None, prob: float = 0.9
) -> Detection:
    return Detection(
        station=station,
        channel_prefix="HH",
        start=T0 + start_s,
        end=T0 + end_s,
        peak_time=T0 + (start_s + 1.0 if peak_s is None else peak_s),
        peak_probability=prob,
        label="earthquake",
        model="convnetquake",
        model_version="1.0",
    )


def ref(t_s: float, station: str | None = None) -> ReferenceTime:
    return ReferenceTime(T0 + t_s, station)


def test_small_synthetic_case_counts_by_hand():
    reference = [ref(100.0, "NC.AAA"), ref(200.0, "NC.BBB"), ref(300.0, "NC.CCC")]
    detections = [
        det("NC.AAA.", 98.0, 108.0, 100.5),  # tp: holds the AAA pick
        det("NC.BBB.", 250.0, 260.0),  # fp: BBB, but 50 s late
        det("NC.DDD.", 299.0, 309.0),  # fp: right time, station not in the reference
    ]
    result = score(detections, reference, tolerance_s=1.0)
    assert (result.tp, result.fp, result.fn) == (1, 2, 2)
    assert result.precision == pytest.approx(1 / 3)
    assert result.recall == pytest.approx(1 / 3)
    assert result.f1 == pytest.approx(1 / 3)
    assert [m.detection.station for m in result.matches] == ["NC.AAA."]
    assert result.matches[0].residual_s == pytest.approx(0.5)
    assert {d.station for d in result.false_positives} == {"NC.BBB.", "NC.DDD."}
    assert [r.station for r in result.false_negatives] == ["NC.BBB", "NC.CCC"]


def test_perfect_and_empty_cases():
    detections = [det("NC.AAA.", 0.0, 10.0), det("NC.BBB.", 0.0, 10.0)]
    perfect = score(detections, [ref(2.0, "NC.AAA"), ref(3.0, "NC.BBB")], 0.0)
    assert (perfect.tp, perfect.fp, perfect.fn, perfect.f1) == (2, 0, 0, 1.0)
    nothing = score([], [ref(2.0, "NC.AAA")], 1.0)
    assert (nothing.tp, nothing.fp, nothing.fn) == (0, 0, 1)
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("t_s", "matched"),
    [
        (98.0, True),  # exactly start - tolerance: inclusive
        (97.999999, False),  # 1 us before
        (112.0, True),  # exactly end + tolerance: inclusive
        (112.000001, False),  # 1 us after
        (105.0, True),  # inside
    ],
)
def test_tolerance_boundaries_are_inclusive_to_the_microsecond(t_s, matched):
    result = score([det("NC.AAA.", 100.0, 110.0)], [ref(t_s, "NC.AAA")], tolerance_s=2.0)
    assert result.tp == int(matched)
    assert result.fn == int(not matched)
    assert result.fp == int(not matched)


def test_zero_tolerance_is_the_bare_detection_span():
    d = det("NC.AAA.", 100.0, 110.0)
    assert score([d], [ref(100.0, "NC.AAA")], 0.0).tp == 1
    assert score([d], [ref(99.9, "NC.AAA")], 0.0).tp == 0


def test_one_to_one_two_detections_near_one_pick_give_one_tp_one_fp():
    near = det("NC.AAA.", 95.0, 105.0, peak_s=100.2)
    far = det("NC.AAA.", 97.0, 107.0, peak_s=101.5)
    for order in ([near, far], [far, near]):
        result = score(order, [ref(100.0, "NC.AAA")], tolerance_s=1.0)
        assert (result.tp, result.fp, result.fn) == (1, 1, 0)
        assert result.matches[0].detection is near  # smallest |pick - peak_time| wins
        assert result.false_positives == [far]


def test_one_detection_two_picks_matches_the_nearer_pick_only():
    d = det("NC.AAA.", 100.0, 120.0, peak_s=111.0)
    result = score([d], [ref(101.0, "NC.AAA"), ref(110.0, "NC.AAA")], tolerance_s=0.0)
    assert (result.tp, result.fp, result.fn) == (1, 0, 1)
    assert result.matches[0].reference.time == T0 + 110.0
    assert result.false_negatives[0].time == T0 + 101.0


def test_greedy_matching_pairs_each_pick_with_its_nearest_free_detection():
    d1 = det("NC.AAA.", 95.0, 110.0, peak_s=103.0)
    d2 = det("NC.AAA.", 100.0, 110.0, peak_s=105.5)
    result = score([d2, d1], [ref(100.0, "NC.AAA"), ref(104.0, "NC.AAA")], tolerance_s=0.0)
    # |104-103| = 1 is the smallest residual, so pick 104 takes d1; pick 100 gets d2
    assert result.tp == 2
    pairs = {round(m.reference.time - T0): m.detection for m in result.matches}
    assert pairs == {104: d1, 100: d2}


def test_station_match_is_by_net_sta_ignoring_location():
    at_loc_00 = det("NC.AAA.00", 0.0, 10.0)
    other_network = det("BK.AAA.00", 0.0, 10.0)
    result = score([at_loc_00, other_network], [ref(5.0, "NC.AAA")], 0.0)
    assert result.tp == 1 and result.matches[0].detection is at_loc_00
    assert result.false_positives == [other_network]
    # a reference without a network matches the station code in any network
    assert score([other_network], [ref(5.0, "AAA")], 0.0).tp == 1
    # case does not matter, location in the reference is ignored too
    assert score([at_loc_00], [ref(5.0, "nc.aaa.10")], 0.0).tp == 1


def test_origin_times_match_any_station_and_network_events_fix_the_fps():
    detections = [
        det(s, 10.0, 20.0, peak_s=12.0 + i) for i, s in enumerate(["NC.A.", "NC.B.", "NC.C."])
    ]
    origins = [ref(11.0), ref(500.0)]
    per_station = score(detections, origins, 1.0)
    assert (per_station.tp, per_station.fp, per_station.fn) == (1, 2, 1)
    events = associate(detections, min_stations=2, tolerance_s=5.0)
    network = score(events, origins, 1.0)
    assert (network.tp, network.fp, network.fn) == (1, 0, 1)
    assert network.matches[0].residual_s == pytest.approx(1.0)


def test_network_events_against_station_picks_is_an_error():
    events = associate([det("NC.A.", 0, 10), det("NC.B.", 0, 10)], min_stations=2)
    with pytest.raises(ValueError, match="per-station picks .* network events"):
        score(events, [ref(1.0, "NC.A")], 1.0)


def test_negative_or_nan_tolerance_is_refused():
    with pytest.raises(ValueError, match=r"tolerance_s \(-1.0\)"):
        score([], [], -1.0)
    with pytest.raises(ValueError, match="tolerance_s"):
        score([], [], float("nan"))


# -- the real NCEDC picks ----------------------------------------------------------------


def picks_rows(data_dir):
    with open(data_dir / "ncal" / "picks.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_read_reference_on_real_picks_csv(data_dir):
    reference = read_reference(data_dir / "ncal" / "picks.csv")
    assert len(reference) == 8 and reference.kind == "picks" and reference.skipped == 0
    first = reference.times[0]
    assert first.station == "BG.ACR"
    assert first.time == UTCDateTime("2012-08-25T05:15:29.600000Z")  # p_time, not s_time
    rows = picks_rows(data_dir)
    assert [t.station for t in reference.times] == [f"{r['network']}.{r['station']}" for r in rows]


def real_detections(rows, found: int) -> list[Detection]:
    """Detections 10 s long around the P pick of the first ``found`` records (peak 0.3 s
    after P), a late false alarm on the first station and one at a station not in the list."""
    out = []
    for r in rows[:found]:
        p = UTCDateTime(r["p_time"])
        out.append(
            Detection(
                station=f"{r['network']}.{r['station']}.",
                channel_prefix=r["channels"][:2],
                start=p - 4.0,
                end=p + 6.0,
                peak_time=p + 0.3,
                peak_probability=0.95,
                label="earthquake",
                model="convnetquake",
                model_version="1.0",
            )
        )
    first = out[0]
    out.append(
        Detection(
            first.station,
            "DP",
            first.start + 60,
            first.end + 60,
            first.peak_time + 60,
            0.91,
            "earthquake",
            "convnetquake",
            "1.0",
        )
    )
    out.append(
        Detection(
            "XX.NOPE.",
            "HH",
            first.start,
            first.end,
            first.peak_time,
            0.92,
            "earthquake",
            "convnetquake",
            "1.0",
        )
    )
    return out


def test_score_against_real_picks_csv(data_dir):
    rows = picks_rows(data_dir)
    reference = read_reference(data_dir / "ncal" / "picks.csv")
    detections = real_detections(rows, found=6)
    result = score(detections, reference, tolerance_s=1.0)
    assert (result.tp, result.fp, result.fn) == (6, 2, 2)
    assert result.precision == pytest.approx(0.75)
    assert result.recall == pytest.approx(0.75)
    assert all(m.residual_s == pytest.approx(0.3) for m in result.matches)
    missed = {r.station for r in result.false_negatives}
    assert missed == {f"{r['network']}.{r['station']}" for r in rows[6:]}


def test_read_reference_csv_variants(tmp_path):
    (tmp_path / "netsta.csv").write_text(
        "station,pick_time\nNC.BJOB.00,2020-01-01T00:00:01Z\nBK.PKD,2020-01-01T00:00:02Z\n,2020-01-01T00:00:03Z\n"
    )
    r = read_reference(tmp_path / "netsta.csv")
    assert [t.station for t in r.times] == ["NC.BJOB", "BK.PKD", None]
    assert r.kind == "mixed"

    (tmp_path / "origins.csv").write_text(
        "Origin_Time,magnitude\n2020-01-01T00:00:01.5Z,2.1\n, 1.0\n"
    )
    r = read_reference(tmp_path / "origins.csv")
    assert r.kind == "origins" and len(r) == 1 and r.skipped == 1
    assert r.times[0].time == T0 + 1.5

    (tmp_path / "stations_only.csv").write_text("station,time\nPKD,2020-01-01T00:00:01Z\n")
    assert read_reference(tmp_path / "stations_only.csv").times[0].station == "PKD"


def test_read_reference_csv_errors_name_the_problem(tmp_path):
    (tmp_path / "notime.csv").write_text("station,magnitude\nNC.A,2\n")
    with pytest.raises(
        ValueError,
        match=r"no time column among station, magnitude; expected one of p_time, pick_time, time, origin_time",
    ):
        read_reference(tmp_path / "notime.csv")
    (tmp_path / "badtime.csv").write_text("time\n2020-01-01T00:00:01Z\nsoon\n")
    with pytest.raises(ValueError, match=r"badtime\.csv, line 3: time 'soon' is not a time"):
        read_reference(tmp_path / "badtime.csv")
    (tmp_path / "short.csv").write_text("station,time\nNC.A\n")
    with pytest.raises(ValueError, match=r"short\.csv, line 2: expected 2 fields, got 1"):
        read_reference(tmp_path / "short.csv")
    with pytest.raises(FileNotFoundError, match="missing.xml"):
        read_reference(tmp_path / "missing.xml")
    (tmp_path / "junk.xml").write_text("not xml at all")
    with pytest.raises(ValueError, match=r"junk\.xml: not a readable event catalog"):
        read_reference(tmp_path / "junk.xml")


def test_read_reference_quakeml_first_pick_per_station_or_origin(tmp_path):
    def pick(t_s, net, sta, phase, status=None):
        return Pick(
            time=T0 + t_s,
            waveform_id=WaveformStreamID(net, sta, "00", "HHZ"),
            phase_hint=phase,
            evaluation_status=status,
        )

    with_picks = Event(
        picks=[
            pick(12.0, "NC", "AAA", "S"),
            pick(10.0, "NC", "AAA", "P"),  # first arrival at AAA
            pick(11.0, "NC", "BBB", "P"),
            pick(9.0, "NC", "BBB", "P", status="rejected"),  # ignored
        ],
        origins=[Origin(time=T0 + 5.0)],
    )
    origin_only = Event(origins=[Origin(time=T0 + 100.0)])
    empty = Event()
    Catalog(events=[with_picks, origin_only, empty]).write(
        str(tmp_path / "ref.xml"), format="QUAKEML"
    )

    r = read_reference(tmp_path / "ref.xml")
    got = [(t.station, t.time - T0) for t in r.times]
    assert got == [("NC.AAA", 10.0), ("NC.BBB", 11.0), (None, 100.0)]
    assert r.skipped == 2  # the rejected pick and the empty event
    assert r.kind == "mixed"


def test_detection_quakeml_serves_as_a_reference(tmp_path):
    detections = [det("NC.AAA.", 0.0, 10.0, 2.0), det("NC.BBB.", 50.0, 60.0, 52.5)]
    write_quakeml(detections, tmp_path / "other_model.xml")
    r = read_reference(tmp_path / "other_model.xml")
    assert [(t.station, t.time - T0) for t in r.times] == [("NC.AAA", 2.0), ("NC.BBB", 52.5)]
    assert score(detections, r, 0.0).f1 == 1.0


# -- the command -------------------------------------------------------------------------


def test_score_command_prints_table_and_writes_json(tmp_path, data_dir):
    detections = real_detections(picks_rows(data_dir), found=6)
    write_catalog(detections, tmp_path / "d.csv")
    out = tmp_path / "score.json"
    result = CliRunner().invoke(
        score_cmd,
        [
            "--detections",
            str(tmp_path / "d.csv"),
            "--catalog",
            str(data_dir / "ncal" / "picks.csv"),
            "--tolerance",
            "1.0",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[3:]}
    assert lines == {
        "precision": "0.750",
        "recall": "0.750",
        "F1": "0.750",
        "tp": "6",
        "fp": "2",
        "fn": "2",
    }
    assert "8 picks" in result.output and "8 detections" in result.output
    doc = json.loads(out.read_text())
    assert (doc["tp"], doc["fp"], doc["fn"]) == (6, 2, 2)
    assert len(doc["matches"]) == 6 and doc["matches"][0]["residual_s"] == pytest.approx(0.3)
    assert len(doc["false_positives"]) == 2


def test_score_command_with_min_stations_scores_network_events(tmp_path):
    detections = [det(s, 10.0, 20.0, peak_s=12.0) for s in ("NC.A.", "NC.B.", "NC.C.")]
    detections.append(det("NC.A.", 300.0, 310.0))  # lone station: not an event
    write_catalog(detections, tmp_path / "d.jsonl")
    (tmp_path / "origins.csv").write_text("origin_time\n2020-01-01T00:00:11Z\n")
    args = ["--detections", str(tmp_path / "d.jsonl"), "--catalog", str(tmp_path / "origins.csv")]
    result = CliRunner().invoke(score_cmd, [*args, "--min-stations", "2"])
    assert result.exit_code == 0, result.output
    assert "1 network events" in result.output
    assert "precision    1.000" in result.output and "recall       1.000" in result.output


def test_score_command_reports_bad_input_cleanly(tmp_path, data_dir):
    (tmp_path / "d.txt").write_text("whatever")
    result = CliRunner().invoke(
        score_cmd,
        [
            "--detections",
            str(tmp_path / "d.txt"),
            "--catalog",
            str(data_dir / "ncal" / "picks.csv"),
        ],
    )
    assert result.exit_code != 0
    assert "cannot tell the catalog format" in result.output
    assert "Traceback" not in result.output
