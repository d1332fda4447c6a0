"""Template builder on real NCEDC records (tests/data/ncal): files, SDS, catalogs, bad inputs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import obspy
import pytest
from click.testing import CliRunner
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

from quakescan.training.build import (
    build_templates,
    cut_templates,
    read_catalog,
    travel_time_s,
)
from quakescan.training.cli import build_cmd
from quakescan.training.templates import read_templates

RATE = 100.0
# BK.BKS (Berkeley) as the NCEDC lists it; the test needs only consistent numbers.
BKS = (37.87622, -122.23558, 243.9)


@pytest.fixture(scope="module")
def ncal(data_dir: Path) -> Path:
    return data_dir / "ncal"


@pytest.fixture(scope="module")
def picks(ncal: Path) -> list[dict]:
    with open(ncal / "picks.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def records(ncal: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixture records and picks."""
    out = tmp_path / "records"
    shutil.copytree(ncal, out)
    return out


def _build(waveforms, catalog, out, **kw):
    return build_templates(waveforms, None, catalog, out, **kw)


def _by_source(t, label: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in np.flatnonzero(t.labels == label):
        out.setdefault(t.source[i], []).append(int(i))
    return out


def _write_picks(path: Path, rows: list[dict], drop: tuple[str, ...] = (), **extra) -> Path:
    cols = [c for c in rows[0] if c not in drop] + list(extra)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({**{c: r[c] for c in cols if c in r}, **{k: v[i] for k, v in extra.items()}})
    return path


def _find(data: np.ndarray, w: np.ndarray) -> int:
    """Index where window w starts in data (exact float32 match), or -1."""
    data = data.astype(np.float32)
    for i in np.flatnonzero(data[: len(data) - len(w) + 1] == w[0]):
        if np.array_equal(data[i : i + len(w)], w):
            return int(i)
    return -1


def test_files_and_picks_csv_give_one_event_per_record(ncal, picks, tmp_path):
    out = tmp_path / "t.h5"
    report = _build([ncal / "*.mseed"], ncal / "picks.csv", out)
    assert report.events_written == 8 and report.events_skipped == {}
    assert report.noise_written == 16  # 28 s before P - 2 s margin: windows at 0 s and 10 s

    t = read_templates(out)
    assert t.counts() == {"noise": 16, "earthquake": 8}
    assert t.windows.shape[1:] == (3, 1000) and t.component_order == "ENZ"
    events = _by_source(t, 1)
    for row in picks:
        (i,) = events[row["file"]]
        assert t.station[i] == f"{row['network']}.{row['station']}"
        assert t.onset_sample[i] == 150  # 1.5 s before P
        st = obspy.read(str(ncal / row["file"]))
        p_index = round((UTCDateTime(row["p_time"]) - st[0].stats.starttime) * RATE)
        by_comp = {tr.stats.channel[-1]: tr for tr in st}
        for k, comp in enumerate("ENZ"):
            if comp in by_comp:
                want = by_comp[comp].data[p_index - 150 : p_index + 850].astype(np.float32)
                np.testing.assert_array_equal(t.windows[i, k], want)
            else:  # vertical-only stations: zero horizontals, as the templates format marks a missing component
                assert row["channels"] in ("EHZ", "SHZ")
                assert not t.windows[i, k].any()


def test_noise_windows_end_before_p_by_the_margin(ncal, picks, tmp_path):
    out = tmp_path / "t.h5"
    _build([ncal / "*.mseed"], ncal / "picks.csv", out, noise_margin_s=3.0, noise_per_record=5)
    t = read_templates(out)
    noise = _by_source(t, 0)
    for row in picks:
        st = obspy.read(str(ncal / row["file"])).select(component="Z")
        p_index = round((UTCDateTime(row["p_time"]) - st[0].stats.starttime) * RATE)
        starts = sorted(_find(st[0].data, t.windows[i, 2]) for i in noise[row["file"]])
        # 27 s of quiet data hold windows at 0 s and 10 s only (grid = window length).
        assert starts == [0, 1000]
        assert all(s + 1000 <= p_index - 300 for s in starts)
        assert all(t.onset_sample[i] == -1 for i in noise[row["file"]])


def test_sds_archive_gives_the_same_windows_as_files(ncal, tmp_path):
    root = tmp_path / "sds"
    for f in sorted(ncal.glob("*.mseed")):
        for tr in obspy.read(str(f)):
            s = tr.stats
            d = root / str(s.starttime.year) / s.network / s.station / f"{s.channel}.D"
            d.mkdir(parents=True, exist_ok=True)
            name = f"{tr.id}.D.{s.starttime.year}.{s.starttime.julday:03d}"
            tr.write(str(d / name), format="MSEED")
    a = _build([ncal / "*.mseed"], ncal / "picks.csv", tmp_path / "files.h5")
    b = build_templates(None, root, ncal / "picks.csv", tmp_path / "sds.h5")
    assert (b.events_written, b.noise_written) == (a.events_written, a.noise_written) == (8, 16)
    ta, tb = read_templates(tmp_path / "files.h5"), read_templates(tmp_path / "sds.h5")
    for label in (0, 1):
        ia = np.flatnonzero(ta.labels == label)
        ib = np.flatnonzero(tb.labels == label)
        ia = ia[np.lexsort((ta.windows[ia, 2, 0], ta.station[ia]))]
        ib = ib[np.lexsort((tb.windows[ib, 2, 0], tb.station[ib]))]
        np.testing.assert_array_equal(ta.station[ia], tb.station[ib])
        np.testing.assert_array_equal(ta.onset_sample[ia], tb.onset_sample[ib])
        np.testing.assert_array_equal(ta.windows[ia], tb.windows[ib])
    assert all(s.startswith("sds:") for s in tb.source)


def test_origins_csv_with_station_coordinates_uses_travel_times(ncal, picks, tmp_path):
    row = next(r for r in picks if r["station"] == "BKS")
    origin = (37.80, -122.05, 8.0)  # lat, lon, depth km: about 18 km from BKS
    tt, epi = travel_time_s(origin, BKS, 6.0)
    assert 15 < epi < 20 and tt == pytest.approx(np.hypot(epi, 8.0 + 0.2439) / 6.0)
    t0 = UTCDateTime(row["p_time"]) - tt
    cat = tmp_path / "origins.csv"
    cat.write_text(f"time,latitude,longitude,depth_km\n{t0},{origin[0]},{origin[1]},{origin[2]}\n")
    stations = tmp_path / "stations.csv"
    stations.write_text(f"id,latitude,longitude,elevation\nBK.BKS,{BKS[0]},{BKS[1]},{BKS[2]}\n")
    # A catalog of origins cannot place windows without station coordinates.
    with pytest.raises(ValueError, match="station coordinates"):
        read_catalog(cat)
    out = tmp_path / "t.h5"
    report = _build([ncal / "*.mseed"], cat, out, stations=stations)
    assert report.events_written == 1
    t = read_templates(out)
    (i,) = np.flatnonzero(t.labels == 1)
    assert t.station[i] == "BK.BKS" and t.onset_sample[i] == 150
    ref = read_templates_from_picks(ncal, tmp_path)
    (j,) = np.flatnonzero((ref.labels == 1) & (ref.station == "BK.BKS"))
    np.testing.assert_array_equal(t.windows[i], ref.windows[j])


def read_templates_from_picks(ncal: Path, tmp_path: Path):
    out = tmp_path / "picks.h5"
    _build([ncal / "*.mseed"], ncal / "picks.csv", out)
    return read_templates(out)


def test_kmeans_clusters_are_written_and_read_as_classes(ncal, picks, tmp_path):
    # Two groups of epicentres 100 km apart; k-means with k=2 must separate them.
    north = [r["station"] in ("ACR", "BKS", "PKD", "MLAC") for r in picks]
    lat = [38.5 if n else 37.6 for n in north]
    lon = [-122.0 + 0.01 * i for i in range(len(picks))]
    cat = _write_picks(
        tmp_path / "picks.csv", picks, latitude=lat, longitude=lon, depth_km=[8.0] * len(picks)
    )
    out = tmp_path / "t.h5"
    report = _build([ncal / "*.mseed"], cat, out, clusters=2, seed=3)
    assert report.clusters == 2
    t = read_templates(out)
    assert t.class_names == ["noise", "cluster0", "cluster1"]
    assert t.counts() == {"noise": 16, "cluster0": 4, "cluster1": 4}
    for rows in (
        [i for i in np.flatnonzero(t.labels > 0) if t.station[i].split(".")[1] in ("ACR", "BKS")],
        [i for i in np.flatnonzero(t.labels > 0) if t.station[i].split(".")[1] in ("BBG", "KCR")],
    ):
        assert len({int(t.labels[i]) for i in rows}) == 1
    # Without locations there is nothing to cluster.
    with pytest.raises(ValueError, match="lack one"):
        _build([ncal / "*.mseed"], ncal / "picks.csv", tmp_path / "x.h5", clusters=2)


def test_quakeml_with_picks(ncal, picks, tmp_path):
    cat = Catalog()
    for k, r in enumerate(picks):
        wid = WaveformStreamID(network_code=r["network"], station_code=r["station"])
        t = UTCDateTime(r["p_time"])
        if k == 0:  # phase only on the origin's arrival, as some agencies write it
            pick = Pick(
                resource_id=ResourceIdentifier(f"smi:test/pick/{k}"), time=t, waveform_id=wid
            )
            origin = Origin(
                time=t - 5,
                latitude=38.0,
                longitude=-122.0,
                depth=8000.0,
                arrivals=[Arrival(pick_id=pick.resource_id, phase="P")],
            )
        else:
            pick = Pick(time=t, waveform_id=wid, phase_hint="P")
            origin = Origin(time=t - 5, latitude=38.0, longitude=-122.0, depth=8000.0)
        s_pick = Pick(time=UTCDateTime(r["s_time"]), waveform_id=wid, phase_hint="S")
        cat.append(Event(picks=[s_pick, pick], origins=[origin]))
    qml = tmp_path / "catalog.xml"
    cat.write(str(qml), format="QUAKEML")
    out = tmp_path / "t.h5"
    report = _build([ncal / "*.mseed"], qml, out)
    assert report.events_written == 8
    t, ref = read_templates(out), read_templates_from_picks(ncal, tmp_path)
    ev, ev_ref = np.flatnonzero(t.labels == 1), np.flatnonzero(ref.labels == 1)
    order, order_ref = np.argsort(t.station[ev]), np.argsort(ref.station[ev_ref])
    np.testing.assert_array_equal(t.windows[ev[order]], ref.windows[ev_ref[order_ref]])
    assert (t.onset_sample[ev] == 150).all()


def test_corrupt_file_is_skipped_and_counted(records, tmp_path):
    (records / "XX.BAD.20200101T000000.mseed").write_bytes(b"\x00garbage, not miniSEED" * 40)
    out = tmp_path / "t.h5"
    report = _build([records / "*.mseed"], records / "picks.csv", out)
    assert report.records_skipped == {"unreadable": 1}
    assert report.records_read == 8 and report.events_written == 8
    assert read_templates(out).counts()["earthquake"] == 8


def test_catalog_without_a_time_column_is_a_clear_error(ncal, picks, tmp_path):
    cat = _write_picks(tmp_path / "picks.csv", picks, drop=("p_time",))
    with pytest.raises(ValueError, match="p_time") as exc:
        _build([ncal / "*.mseed"], cat, tmp_path / "t.h5")
    assert str(cat) in str(exc.value)


def test_station_without_data_is_counted(ncal, picks, tmp_path):
    extra = {**picks[0], "network": "XX", "station": "NONE", "file": ""}
    cat = _write_picks(tmp_path / "picks.csv", [*picks, extra])
    report = _build([ncal / "*.mseed"], cat, tmp_path / "t.h5")
    assert report.events_written == 8 and report.events_skipped == {"no_data": 1}
    assert "events skipped: no_data" in report.table()


def test_gap_flat_run_and_missing_component_are_skipped_not_filled(records, picks, tmp_path):
    # BK.BKS: a 0.5 s gap just before P on every channel.
    f = records / "BK.BKS.20170715T104920.mseed"
    st = obspy.read(str(f))
    st = st.slice(endtime=st[0].stats.starttime + 29.0) + st.slice(
        starttime=st[0].stats.starttime + 29.5
    )
    st.write(str(f), format="MSEED")
    # BK.PKD: the vertical holds one value for 1 s after P (a filled gap).
    f = records / "BK.PKD.20140616T132510.mseed"
    st = obspy.read(str(f))
    st.select(component="Z")[0].data[3050:3150] = 17.0
    st.write(str(f), format="MSEED")
    # NN.OMMB: the E channel is missing.
    f = records / "NN.OMMB.20120302T174307.mseed"
    st = obspy.read(str(f))
    st.remove(st.select(component="E")[0])
    st.write(str(f), format="MSEED")

    out = tmp_path / "t.h5"
    report = _build([records / "*.mseed"], records / "picks.csv", out)
    assert report.events_written == 5
    assert report.events_skipped == {"gap": 1, "flat": 1, "missing_component": 1}
    t = read_templates(out)
    assert not {"BK.BKS", "BK.PKD", "NN.OMMB"} & set(t.station[t.labels == 1])
    # The quiet data before the gap and the flat run still gives noise windows.
    assert {"BK.BKS", "BK.PKD"} <= set(t.station[t.labels == 0])
    assert report.noise_written == 14


def test_channels_1_and_2_map_to_n_and_e(ncal, records, tmp_path):
    f = records / "BK.BKS.20170715T104920.mseed"
    st = obspy.read(str(f))
    for tr in st:
        tr.stats.channel = {"HHN": "HH1", "HHE": "HH2"}.get(tr.stats.channel, tr.stats.channel)
    st.write(str(f), format="MSEED")
    out = tmp_path / "t.h5"
    _build([records / "*.mseed"], records / "picks.csv", out)
    t = read_templates(out)
    (i,) = np.flatnonzero((t.labels == 1) & (t.station == "BK.BKS"))
    src = obspy.read(str(ncal / f.name))  # the original E, N, Z channels
    for k, comp in enumerate("ENZ"):
        want = src.select(component=comp)[0].data[2850:3850].astype(np.float32)
        np.testing.assert_array_equal(t.windows[i, k], want)


def test_resampling_and_short_pre_event_data(records, picks, tmp_path):
    out = tmp_path / "t50.h5"
    report = _build([records / "*.mseed"], records / "picks.csv", out, sampling_rate_hz=50.0)
    t = read_templates(out)
    assert report.events_written == 8 and t.sampling_rate_hz == 50.0
    assert t.windows.shape[2] == 500 and (t.onset_sample[t.labels == 1] == 75).all()

    # Records that start 5 s before P: too short for 8 s before P, unless the window may start
    # at the data's start (P then 5 s in).
    for f in records.glob("*.mseed"):
        st = obspy.read(str(f))
        st.trim(starttime=st[0].stats.starttime + 25.0)
        st.write(str(f), format="MSEED")
    kw = dict(window_s=20.0, pre_onset_s=8.0, noise_per_record=0)
    short = cut_templates([records / "*.mseed"], None, records / "picks.csv", **kw)
    assert len(short.events) == 0 and short.report.events_skipped == {"too_short": 8}
    shifted = cut_templates(
        [records / "*.mseed"], None, records / "picks.csv", min_pre_onset_s=4.0, **kw
    )
    assert len(shifted.events) == 8 and (shifted.events.p_sample == 500).all()


def test_cli_builds_end_to_end(ncal, tmp_path):
    out = tmp_path / "cli.h5"
    args = ["--waveforms", str(ncal / "*.mseed"), "--catalog", str(ncal / "picks.csv")]
    args += ["--out", str(out), "--window-s", "12", "--pre-onset-s", "2", "--no-progress"]
    result = CliRunner().invoke(build_cmd, args)
    assert result.exit_code == 0, result.output
    assert "event windows written" in result.output and "noise windows written" in result.output
    t = read_templates(out)
    assert t.windows.shape[2] == 1200 and (t.onset_sample[t.labels == 1] == 200).all()

    both = CliRunner().invoke(build_cmd, [*args, "--sds", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one" in both.output
    bad = CliRunner().invoke(
        build_cmd,
        [
            "--sds",
            str(tmp_path),
            "--catalog",
            str(ncal / "LICENSE_MIT"),
            "--out",
            str(tmp_path / "x.h5"),
        ],
    )
    assert bad.exit_code == 1 and "QuakeML" in bad.output


def test_shipped_default_templates_load():
    path = Path(__file__).parents[2] / "training" / "data" / "default_templates.h5"
    t = read_templates(path)  # shipped in the repository: the default model's training set
    counts = t.counts()
    assert counts["earthquake"] >= 200 and counts["noise"] >= 250
    assert t.windows.shape[1:] == (3, 2000) and t.component_order == "ENZ"
    ev = t.labels == 1
    assert t.onset_sample[ev].min() >= 400 and t.onset_sample[ev].max() == 800
    assert all(t.station) and all(t.source)
    # Reunion noise (vertical only) comes from YA.UV06 before noon only: the rest of the day
    # is the held-out false-alarm test.
    reunion = [i for i, s in enumerate(t.source) if s.startswith("reunion:")]
    assert reunion and {t.station[i] for i in reunion} == {"YA.UV06"}
    hours = {int(t.source[i].rsplit(":", 1)[1][9:11]) for i in reunion}  # ...:20100901T073400
    assert max(hours) < 12
