"""Catalog I/O: QuakeML (real ObsPy), CSV and JSON lines round trips, errors, dedupe, sort."""

from __future__ import annotations

import json
import os
from pathlib import Path

import obspy
import pytest
from obspy import UTCDateTime

from quakescan.detector.catalog import (
    FIELDS,
    QUAKESCAN_NS,
    Detection,
    dedupe,
    detection_id,
    read_catalog,
    read_csv,
    read_jsonl,
    read_quakeml,
    write_catalog,
    write_csv,
    write_jsonl,
    write_quakeml,
)
from quakescan.detector.fsio import atomic_write

T0 = UTCDateTime("2014-08-12T04:00:30.000000Z")


def det(
    station: str = "NC.BJOB.",
    start_s: float = 0.0,
    duration_s: float = 10.0,
    peak_s: float = 3.0,
    prob: float = 0.97,
    label: str = "earthquake",
    prefix: str = "HH",
    model: str = "convnetquake",
    version: str = "1.2.0",
) -> Detection:
    return Detection(
        station=station,
        channel_prefix=prefix,
        start=T0 + start_s,
        end=T0 + start_s + duration_s,
        peak_time=T0 + start_s + peak_s,
        peak_probability=prob,
        label=label,
        model=model,
        model_version=version,
    )


@pytest.fixture
def detections() -> list[Detection]:
    """Awkward but valid values: microsecond times, a float that needs 17 digits, an
    empty location, an empty channel prefix and version, a non-earthquake label."""
    return [
        det("NC.BJOB.", 0.0, peak_s=2.123456, prob=0.1 + 0.2),
        det("YA.UV05.00", 12.5, duration_s=40.0, peak_s=7.25, prob=0.912345678, label="tremor"),
        det("BK.PKD.00", 100.000001, prob=1.0, prefix="", version=""),
        det("CI.MLAC.", 3600.0, prob=0.0, label="noise", prefix="HN"),
    ]


def assert_same(got: list[Detection], want: list[Detection]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in FIELDS:
            assert getattr(g, name) == getattr(w, name), name
        assert g.peak_time.ns == w.peak_time.ns
        assert g == w


@pytest.mark.parametrize("name", ["cat.xml", "cat.quakeml", "cat.csv", "cat.jsonl", "cat.json"])
def test_round_trip_through_file_gives_equal_detections(tmp_path, detections, name):
    path = write_catalog(detections, tmp_path / name)
    assert path == tmp_path / name
    assert_same(read_catalog(path), detections)


@pytest.mark.parametrize(
    ("writer", "reader", "name"),
    [
        (write_quakeml, read_quakeml, "c.xml"),
        (write_csv, read_csv, "c.csv"),
        (write_jsonl, read_jsonl, "c.jsonl"),
    ],
)
def test_each_format_round_trips_and_keeps_ids(tmp_path, detections, writer, reader, name):
    writer(detections, tmp_path / name)
    got = reader(tmp_path / name)
    assert_same(got, detections)
    assert [d.id for d in got] == [d.id for d in detections]
    # the stable id is what the detection would compute for itself
    assert got[0].id == detection_id("NC.BJOB.", "HH", T0, "convnetquake", "1.2.0")


@pytest.mark.parametrize("fmt", ["quakeml", "csv", "jsonl"])
def test_empty_catalog_round_trips(tmp_path, fmt):
    path = write_catalog([], tmp_path / "empty.out", fmt=fmt)
    assert read_catalog(path, fmt=fmt) == []


def test_quakeml_is_readable_by_plain_obspy(tmp_path, detections):
    path = write_quakeml(detections, tmp_path / "cat.xml")
    cat = obspy.read_events(str(path))
    assert len(cat) == len(detections)
    assert [ev.event_type for ev in cat] == [
        "earthquake",
        "not reported",
        "earthquake",
        "not reported",
    ]

    ev, d = cat[0], detections[0]
    assert d.id in str(ev.resource_id)
    assert len(ev.picks) == 1
    pick = ev.picks[0]
    assert pick.time == d.peak_time
    assert pick.waveform_id.get_seed_string() == "NC.BJOB..HH?"
    assert pick.evaluation_mode == "automatic"
    assert (ev.creation_info.author, ev.creation_info.version) == ("convnetquake", "1.2.0")
    assert (pick.creation_info.author, pick.creation_info.version) == ("convnetquake", "1.2.0")
    # every detection field is in the quakescan namespace
    assert {k for k, v in ev.extra.items() if v["namespace"] == QUAKESCAN_NS} == set(FIELDS)
    assert ev.extra["label"]["value"] == "earthquake"
    assert cat[1].extra["label"]["value"] == "tremor"
    # channel prefix empty -> no channel code, location kept
    assert cat[2].picks[0].waveform_id.get_seed_string() == "BK.PKD.00."
    assert 'xmlns:quakescan="https://quakescan.invalid/xmlns/1.0"' in path.read_text()


def test_writing_the_same_detections_twice_gives_identical_files(tmp_path, detections):
    for ext in ("xml", "csv", "jsonl"):
        a = write_catalog(detections, tmp_path / f"a.{ext}").read_bytes()
        b = write_catalog(list(detections), tmp_path / f"b.{ext}").read_bytes()
        assert a == b, ext


def test_csv_layout_header_and_microsecond_utc_times(tmp_path, detections):
    lines = write_csv(detections, tmp_path / "c.csv").read_text().splitlines()
    assert (
        lines[0]
        == "id,station,channel_prefix,start,end,peak_time,peak_probability,label,model,model_version"
    )
    assert len(lines) == 1 + len(detections)
    first = lines[1].split(",")
    assert first[3] == "2014-08-12T04:00:30.000000Z"
    assert first[5] == "2014-08-12T04:00:32.123456Z"
    assert first[6] == "0.30000000000000004"


def test_jsonl_has_one_object_per_line_with_all_fields(tmp_path, detections):
    lines = write_jsonl(detections, tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == len(detections)
    obj = json.loads(lines[1])
    assert list(obj) == list(FIELDS)
    assert obj["station"] == "YA.UV05.00"
    assert obj["end"] == "2014-08-12T04:01:22.500000Z"


def test_explicit_format_overrides_the_extension(tmp_path, detections):
    path = write_catalog(detections, tmp_path / "detections.txt", fmt="CSV")
    assert path.read_text().startswith("id,station,")
    assert_same(read_catalog(path, fmt="csv"), detections)


def test_unknown_extension_and_format_name_the_allowed_ones(tmp_path, detections):
    with pytest.raises(ValueError, match=r"'\.txt'.*\.xml.*\.csv.*\.jsonl"):
        write_catalog(detections, tmp_path / "detections.txt")
    with pytest.raises(ValueError, match=r"'geojson'.*quakeml, csv, jsonl"):
        read_catalog(tmp_path / "detections.csv", fmt="geojson")
    assert not (tmp_path / "detections.txt").exists()


def test_missing_file_and_missing_directory(tmp_path, detections):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_catalog(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_catalog(detections, tmp_path / "no" / "such" / "dir.csv")


def _write_csv_rows(tmp_path: Path, detections: list[Detection], edit) -> Path:
    path = write_csv(detections, tmp_path / "c.csv")
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda ls: ls.__setitem__(2, ls[2].replace("2014-08-12T04:00:42.500000Z", "yesterday")),
            r"c\.csv, line 3: start 'yesterday' is not an ISO 8601",
        ),
        (
            lambda ls: ls.__setitem__(3, ls[3] + ",extra"),
            r"c\.csv, line 4: expected 10 fields .* got 11",
        ),
        (
            lambda ls: ls.__setitem__(2, ls[2].replace("0.912345678", "1.5")),
            r"line 3: peak_probability '1.5' is not a number in \[0, 1\]",
        ),
        (
            lambda ls: ls.__setitem__(2, ls[2].replace("0.912345678", "high")),
            r"line 3: peak_probability 'high'",
        ),
        (
            lambda ls: ls.__setitem__(0, ls[0].replace(",label", ",class")),
            r"line 1: header lacks column\(s\) label",
        ),
        (
            lambda ls: ls.__setitem__(2, ls[2].replace("YA.UV05.00", "")),
            r"line 3: station is empty",
        ),
    ],
)
def test_malformed_csv_rows_name_file_line_and_problem(tmp_path, detections, edit, message):
    path = _write_csv_rows(tmp_path, detections, edit)
    with pytest.raises(ValueError, match=message):
        read_csv(path)


def test_csv_end_before_start_is_rejected(tmp_path):
    bad = det(duration_s=10.0)
    bad.end = bad.start - 1.0
    path = write_csv([bad], tmp_path / "c.csv")
    with pytest.raises(ValueError, match=r"line 2: end .* is before start"):
        read_csv(path)


def test_empty_csv_file_is_not_a_catalog(tmp_path):
    (tmp_path / "c.csv").write_text("")
    with pytest.raises(ValueError, match=r"c\.csv: empty file; expected a CSV header"):
        read_csv(tmp_path / "c.csv")


def test_malformed_jsonl_lines_name_file_and_line(tmp_path, detections):
    path = write_jsonl(detections, tmp_path / "c.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl, line 3: invalid JSON"):
        read_jsonl(path)

    obj = json.loads(lines[0])
    del obj["label"]
    path.write_text(lines[1] + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(ValueError, match=r"line 2: missing field\(s\) label"):
        read_jsonl(path)

    path.write_text("[1, 2, 3]\n")
    with pytest.raises(ValueError, match=r"line 1: expected an object"):
        read_jsonl(path)


def test_blank_lines_in_jsonl_are_skipped(tmp_path, detections):
    path = write_jsonl(detections, tmp_path / "c.jsonl")
    path.write_text("\n" + path.read_text().replace("\n", "\n\n"))
    assert_same(read_jsonl(path), detections)


def test_foreign_or_broken_quakeml_is_refused(tmp_path):
    foreign = obspy.core.event.Catalog(
        events=[obspy.core.event.Event(origins=[obspy.core.event.Origin(time=T0)])]
    )
    foreign.write(str(tmp_path / "foreign.xml"), format="QUAKEML")
    with pytest.raises(ValueError, match=r"foreign\.xml, event 1 .*no quakescan detection fields"):
        read_quakeml(tmp_path / "foreign.xml")

    (tmp_path / "broken.xml").write_text("<quakeml><event>")
    with pytest.raises(ValueError, match=r"broken\.xml: not a readable QuakeML file"):
        read_quakeml(tmp_path / "broken.xml")


def test_quakeml_with_a_tampered_field_is_refused(tmp_path, detections):
    path = write_quakeml(detections, tmp_path / "c.xml")
    path.write_text(path.read_text().replace(">0.912345678<", ">-3<"))
    with pytest.raises(ValueError, match=r"event 2 .*peak_probability '-3'"):
        read_quakeml(path)


def test_atomic_write_leaves_old_file_and_no_temp_file_on_failure(tmp_path, detections):
    path = write_csv(detections, tmp_path / "c.csv")
    before = path.read_bytes()

    def crash(tmp: str) -> None:
        Path(tmp).write_text("id,station\nhalf a catalog")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.csv"]
    # a successful write leaves no temp file either, and a readable (not 0600) file
    write_jsonl(detections, tmp_path / "c.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["c.csv", "c.jsonl"]
    assert (tmp_path / "c.jsonl").stat().st_mode & 0o044 == 0o044


def test_dedupe_keeps_one_per_id_the_most_probable_whatever_the_order():
    weak = det("NC.BJOB.", 0.0, prob=0.6)
    strong = det("NC.BJOB.", 0.0, prob=0.95, duration_s=12.0)
    other = det("BK.PKD.", 0.0)
    assert weak.id == strong.id != other.id
    assert dedupe([weak, other, strong]) == [strong, other]
    assert dedupe([strong, other, weak]) == [strong, other]
    assert dedupe([other, other]) == [other]


def test_detections_sort_by_start_then_station_channel_and_id():
    a = det("NC.BJOB.", 10.0)
    b = det("BK.PKD.", 10.0)
    c = det("ZZ.LAST.", 0.0)
    eh = det("BK.PKD.", 10.0, prefix="EH")
    assert sorted([a, b, c, eh]) == [c, eh, b, a]
    assert sorted([eh, c, a, b]) == [c, eh, b, a]
    assert c < b < a and a > c and b <= b and min(a, b, c) is c


def test_detection_order_is_total_and_agrees_with_equality():
    """Exactly one of a < b, a == b, a > b for every pair, even for detections that share an
    id (same start, station, model) and differ only in end or probability; every input
    order gives the same sorted list."""
    import itertools
    import random

    pool = [
        det("NC.BJOB.", 0.0),
        det("NC.BJOB.", 0.0, prob=0.6),
        det("NC.BJOB.", 0.0, duration_s=12.0),
        det("NC.BJOB.", 0.0, label="explosion"),
        det("NC.BJOB.", 0.0, version="2"),
        det("NC.BJOB.", 0.0000004),  # below UTCDateTime's microsecond: equal to the first
        det("BK.PKD.", 0.0),
        det("BK.PKD.", -0.5),
    ]
    for x, y in itertools.product(pool, repeat=2):
        assert [x < y, x == y, x > y].count(True) == 1, (x, y)
        assert (x <= y) == (x < y or x == y) and (x >= y) == (x > y or x == y)
    assert pool[0] == pool[5] and pool[0] != pool[1]
    want = sorted(pool)
    rng = random.Random(0)
    for _ in range(50):
        shuffled = pool[:]
        rng.shuffle(shuffled)
        assert sorted(shuffled) == want


def test_detection_text_form_is_the_one_line_the_commands_print(tmp_path):
    d = det("NC.BJOB.", 0.25, prob=0.9734, label="earthquake")
    assert str(d) == (
        "2014-08-12T04:00:33.250000Z  NC.BJOB..HH  earthquake p=0.973  "
        f"[2014-08-12T04:00:30.250000Z - 2014-08-12T04:00:40.250000Z]  id={d.id}"
    )
    (back,) = read_jsonl(write_jsonl([d], tmp_path / "c.jsonl"))
    assert str(back) == str(d)
