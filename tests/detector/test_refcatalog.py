"""The one reference-catalog reader (score and templates build): phases, events, locations."""

from __future__ import annotations

import pytest
from obspy import UTCDateTime
from obspy.core.event import (
    Arrival,
    Catalog,
    Event,
    Origin,
    Pick,
    ResourceIdentifier,
    WaveformStreamID,
)

from quakescan.detector.refcatalog import read_reference

T0 = UTCDateTime("2020-01-01T00:00:00Z")


def test_csv_phases_events_locations_and_origin_times(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text(
        "event_id,network,station,phase,p_time,origin_time,latitude,longitude,depth_km\n"
        "ev1,BK,PKD,P,2020-01-01T00:00:05Z,2020-01-01T00:00:01Z,35.9,-120.4,8\n"
        "ev1,BK,PKD,S,2020-01-01T00:00:08Z,2020-01-01T00:00:01Z,35.9,-120.4,8\n"
        "ev2,NC,BJOB,Pg,2020-01-01T00:01:05Z,,,,\n"
    )
    every = read_reference(path)
    assert [t.phase for t in every.times] == ["P", "S", "Pg"]
    p = read_reference(path, phase="P")
    assert [(t.station, t.time - T0, t.event) for t in p.times] == [
        ("BK.PKD", 5.0, "ev1"),
        ("NC.BJOB", 65.0, "ev2"),
    ]
    assert p.times[0].coords == (35.9, -120.4, 8.0) and p.times[1].coords is None
    assert p.skip_reasons == {"not_p_phase": 1} and p.skipped == 1
    assert [(o.station, o.time - T0, o.event) for o in p.origins] == [(None, 1.0, "ev1")]
    assert p.format == "csv" and p.time_column == "p_time" and p.kind == "picks"


def test_csv_bad_number_names_file_line_and_column(tmp_path):
    path = tmp_path / "origins.csv"
    path.write_text("time,latitude,longitude\n2020-01-01T00:00:01Z,north,-120\n")
    with pytest.raises(ValueError, match=r"origins\.csv, line 2: column 'latitude' has 'north'"):
        read_reference(path)


def test_quakeml_phase_from_arrivals_and_origin_locations(tmp_path):
    wid = WaveformStreamID("NC", "AAA", "", "HHZ")
    s_pick = Pick(time=T0 + 9.0, waveform_id=wid, phase_hint="S")
    p_pick = Pick(
        time=T0 + 10.0, waveform_id=wid, resource_id=ResourceIdentifier("smi:local/pick/1")
    )
    origin = Origin(
        time=T0 + 5.0,
        latitude=37.0,
        longitude=-122.0,
        depth=6000.0,
        arrivals=[Arrival(pick_id=p_pick.resource_id, phase="P")],
    )
    no_picks = Event(origins=[Origin(time=T0 + 100.0, latitude=36.0, longitude=-121.0)])
    Catalog(events=[Event(picks=[s_pick, p_pick], origins=[origin]), no_picks]).write(
        str(tmp_path / "c.xml"), format="QUAKEML"
    )
    anything = read_reference(tmp_path / "c.xml")
    assert [(t.station, t.time - T0) for t in anything.times][0] == ("NC.AAA", 9.0)
    p = read_reference(tmp_path / "c.xml", phase="P")
    assert [(t.station, t.time - T0, t.phase) for t in p.times] == [
        ("NC.AAA", 10.0, "P"),
        (None, 100.0, ""),
    ]
    assert p.times[0].coords == (37.0, -122.0, 6.0)
    assert [o.time - T0 for o in p.origins] == [5.0, 100.0] and p.format == "quakeml"
