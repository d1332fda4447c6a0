"""`quakescan detect`, `plot` and `models` as a seismologist runs them (click's CliRunner),
checked against the Detector API on the same real waveforms."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import obspy
import pytest
from click.testing import CliRunner, Result
from obspy import Stream, UTCDateTime

from quakescan.detector import Detector
from quakescan.detector.catalog import read_catalog
from quakescan.detector.model import OnnxModel, shipped_models
from quakescan.detector.stalta import StaLtaParams
from quakescan.serving.cli import cli

REUNION = [
    "reunion/YA.UV05.00.HHZ.2010-09-01T0728.mseed",
    "reunion/YA.UV06.00.HHZ.2010-09-01T0728.mseed",
]
BKS = "ncal/BK.BKS.20170715T104920.mseed"
# The reunion records moved so that the 07:33:25 event (UV05: 07:33:25-07:33:44) straddles
# midnight: the record starts 23:54:25 and its detection runs 23:59:50 -> 00:00:09.
SHIFTED_START = UTCDateTime("2010-09-01T23:54:25")


@pytest.fixture(scope="module")
def det():
    return Detector(device="cpu")


def quakescan(*args) -> Result:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return res


def summary_rows(output: str) -> dict[str, list[int]]:
    """The summary table: station -> [windows, detections, gaps, skipped]."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 5 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = [int(p) for p in parts[1:]]
        elif len(parts) == 6 and parts[0] == "(unreadable" and all(p.isdigit() for p in parts[2:]):
            rows["(unreadable files)"] = [int(p) for p in parts[2:]]
    return rows


def shifted_reunion(data_dir: Path) -> Stream:
    st = Stream()
    for f in REUNION:
        st += obspy.read(str(data_dir / f))
    for tr in st:
        tr.stats.starttime = SHIFTED_START
    return st


def write_sds(st: Stream, root: Path) -> None:
    """An SDS archive (one file per channel and day), as slarchive or ObsPy would write it."""
    for tr in st:
        t = tr.stats.starttime
        day = UTCDateTime(t.date)
        while day < tr.stats.endtime:
            piece = tr.slice(max(day, t), day + 86400 - tr.stats.delta / 2, nearest_sample=False)
            s = piece.stats
            d = root / f"{day.year}/{s.network}/{s.station}/{s.channel}.D"
            d.mkdir(parents=True, exist_ok=True)
            name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{day.year}.{day.julday:03d}"
            piece.write(str(d / name), format="MSEED", encoding="STEIM2")
            day += 86400


# ------------------------------------------------------------------ detect
ACR = "ncal/BG.ACR.20120825T051459.mseed"


@pytest.mark.parametrize(
    "ext, files",
    [("xml", [*REUNION, BKS]), ("csv", [BKS, ACR]), ("jsonl", [BKS, ACR])],
)
def test_detect_on_files_writes_a_catalog_equal_to_the_detector(data_dir, tmp_path, ext, files):
    paths = [data_dir / f for f in files]
    out = tmp_path / f"catalog.{ext}"
    res = quakescan("detect", *paths, "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    st = Stream()
    for p in paths:
        st += obspy.read(str(p))
    local = Detector(device="cpu")
    want = sorted(local.detect(st))
    assert len(want) >= 2
    got = sorted(read_catalog(out))
    assert got == want, "ids, times, probabilities and labels all equal"
    if ext == "xml":
        events = obspy.read_events(str(out))
        assert len(events) == len(want)
        assert {str(e.resource_id).rsplit("/", 1)[-1] for e in events} == {d.id for d in want}
    # The summary table counts what was done, per station.
    rows = summary_rows(res.output)
    assert rows["total"] == [local.stats.windows, len(want), 0, 0]
    stations = {tr.id.rsplit(".", 1)[0] + "." + tr.stats.channel[:2] for tr in st}
    assert set(rows) == stations | {"total"}, "one row per station"
    for key in stations:
        station = key.rsplit(".", 1)[0]
        assert rows[key][1] == sum(d.station == station for d in want), key
    if ext == "xml":
        assert rows["YA.UV05.00.HH"][0] == 591  # 600 s at 1 s steps: 591 whole 10 s windows
    fmt = {"xml": "quakeml"}.get(ext, ext)
    assert f"catalog written to {out} ({fmt}, {len(want)} records)" in res.output


def test_detect_without_out_prints_each_detection(data_dir, det):
    res = quakescan("detect", data_dir / BKS, "--device", "cpu")
    assert res.exit_code == 0, res.output
    want = det.detect(obspy.read(str(data_dir / BKS)))
    assert want
    for d in want:
        assert f"id={d.id}" in res.output
        assert str(d.peak_time) in res.output


def test_detect_on_an_sds_archive_across_two_days_equals_a_single_pass(data_dir, tmp_path, det):
    st = shifted_reunion(data_dir)
    write_sds(st, tmp_path / "sds")
    assert len(list((tmp_path / "sds").rglob("*.D.2010.24[45]"))) == 4, "two days, two stations"
    out = tmp_path / "sds.jsonl"
    res = quakescan(
        "detect",
        "--sds",
        tmp_path / "sds",
        "--stations",
        "YA.UV05,YA.UV06.00.HHZ",
        "--start",
        "2010-09-01T23:00:00",
        "--end",
        "2010-09-02T01:00:00",
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    got = sorted(read_catalog(out))
    single = Detector(device="cpu")
    want = sorted(single.detect(st))
    assert got == want
    midnight = UTCDateTime("2010-09-02T00:00:00")
    across = [d for d in got if d.start < midnight < d.end]
    assert across and across[0].peak_probability > 0.9, "the event across midnight is one detection"
    rows = summary_rows(res.output)
    assert rows["total"][0] == single.stats.windows, "no window lost or repeated at midnight"


def test_stalta_method_runs_through_the_same_outputs(data_dir, tmp_path):
    paths = [data_dir / BKS, data_dir / "ncal/NC.KCR.20100305T062122.mseed"]
    out = tmp_path / "stalta.csv"
    res = quakescan("detect", *paths, "--method", "stalta", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    assert "method stalta" in res.output
    st = obspy.read(str(paths[0])) + obspy.read(str(paths[1]))
    want = sorted(Detector(device="cpu", method="stalta", stalta=StaLtaParams()).detect(st))
    got = sorted(read_catalog(out))
    assert got == want and got
    assert {d.model for d in got} == {"stalta"}
    p_bks = UTCDateTime("2017-07-15T10:49:50.61")
    assert any(d.start - 2 <= p_bks <= d.end + 2 for d in got if d.station == "BK.BKS.")


def test_min_stations_two_gives_the_network_event_of_07_33(data_dir, tmp_path):
    out = tmp_path / "events.xml"
    reunion = [data_dir / f for f in REUNION]
    res = quakescan("detect", *reunion, "--min-stations", "2", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    assert "network events with >= 2 stations:" in res.output
    n = int(res.output.split("network events with >= 2 stations:")[1].split()[0])
    events = obspy.read_events(str(out))
    assert len(events) == n >= 1
    target = UTCDateTime("2010-09-01T07:33:35")
    near = [e for e in events if any(abs(p.time - target) < 5 for p in e.picks)]
    assert len(near) == 1, "one network event for the 07:33 event"
    ev = near[0]
    assert {p.waveform_id.station_code for p in ev.picks} == {"UV05", "UV06"}
    assert ev.event_type == "earthquake"


def test_a_corrupt_file_among_good_ones_is_skipped_and_counted(data_dir, tmp_path, det):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data_dir / BKS, folder / "good.mseed")
    (folder / "broken.mseed").write_bytes(b"\x00\x01 definitely not miniSEED " * 100)
    res = quakescan("detect", folder, "--device", "cpu")
    assert res.exit_code == 0, res.output
    rows = summary_rows(res.output)
    assert rows["(unreadable files)"][3] == 1
    assert rows["total"][3] == 1
    assert "skipped: unreadable_file 1" in res.output
    want = det.detect(obspy.read(str(data_dir / BKS)))
    assert rows["BK.BKS..HH"][1] == len(want) >= 1
    assert all(f"id={d.id}" in res.output for d in want), "the good file is still processed"


def test_bad_arguments_are_usage_errors(data_dir, tmp_path):
    (tmp_path / "sds").mkdir()
    common = ["--start", "2010-09-01", "--end", "2010-09-02", "--device", "cpu"]
    res = quakescan("detect", "--sds", tmp_path / "sds", "--stations", "UV05", *common)
    assert res.exit_code == 2
    assert "--stations" in res.output and "'UV05'" in res.output and "NET.STA" in res.output
    res = quakescan("detect", "--sds", tmp_path / "sds", "--start", "2010-09-01")
    assert res.exit_code == 2 and "--sds needs --stations, --start and --end" in res.output
    sds = ["--sds", tmp_path / "sds", "--stations", "YA.UV05"]
    res = quakescan("detect", *sds, "--start", "yesterday-ish", "--end", "2010-09-02")
    assert res.exit_code == 2 and "'yesterday-ish' is not a time" in res.output
    res = quakescan("detect", data_dir / BKS, "--out", tmp_path / "c.xlsx", "--device", "cpu")
    assert res.exit_code == 2 and "xlsx" in res.output
    res = quakescan("detect", tmp_path / "nowhere.mseed", "--device", "cpu")
    assert res.exit_code == 1 and "nowhere.mseed" in res.output


# -------------------------------------------------------------------- plot
def test_plot_writes_a_png(data_dir, tmp_path):
    out = tmp_path / "bks.png"
    res = quakescan("plot", data_dir / BKS, "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert f"figure written to {out}" in res.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 600 and height >= 300, (width, height)
    assert 20_000 < len(data) < 5_000_000
    res = quakescan("plot", data_dir / BKS, "--out", out, "--station", "XX.NONE")
    assert res.exit_code == 1 and "no waveform data to plot" in res.output


# ------------------------------------------------------------------ models
def test_models_lists_every_shipped_model():
    res = quakescan("models")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in shipped_models():
        line = next((x for x in lines if x.split() and x.split()[0] == name), None)
        assert line is not None, f"{name} is not listed"
        assert "missing" not in line, f"a shipped model is missing from the package: {line}"
    conv = next(x for x in lines if x.startswith("convnetquake "))
    assert "classes noise,earthquake" in conv and "test recall" in conv


def test_models_prints_the_spec_of_a_model_as_json():
    res = quakescan("models", "convnetquake")
    assert res.exit_code == 0, res.output
    spec = json.loads(res.output)
    want = OnnxModel("convnetquake", device="cpu").spec
    assert spec == json.loads(want.to_json())
    assert spec["name"] == "convnetquake"
    assert spec["class_names"][0] == "noise"
    res = quakescan("models", "nowhere.onnx")
    assert res.exit_code == 1 and "nowhere.onnx" in res.output


def _resampled(path: Path, rate_hz: float, out: Path) -> Path:
    st = obspy.read(str(path))
    for tr in st:
        tr.data = tr.data.astype("float32")
        if rate_hz < tr.stats.sampling_rate:
            tr.filter("lowpass", freq=0.4 * rate_hz, zerophase=True)
        tr.resample(rate_hz, no_filter=True)
        tr.data = tr.data.astype("float32")
    st.write(str(out), format="MSEED", encoding="FLOAT32")
    return out


def test_data_sampled_below_the_models_band_is_refused_not_upsampled(data_dir, tmp_path):
    """A 1 Hz trace cannot hold a 2-25 Hz band: refused with its reason, and `detect` fails
    because nothing could be processed (it used to upsample it and report 'earthquakes')."""
    one_hz = _resampled(data_dir / REUNION[1], 1.0, tmp_path / "uv06_1hz.mseed")
    res = quakescan("detect", one_hz, "--device", "cpu")
    assert res.exit_code == 1, res.output
    assert "skipped: sampling_rate_too_low 1" in res.output
    assert "nothing could be processed" in res.output
    # ... while 200 Hz data is served (resampled to the model's 100 Hz).
    fast = _resampled(data_dir / REUNION[1], 200.0, tmp_path / "uv06_200hz.mseed")
    res = quakescan("detect", fast, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "sampling_rate_too_low" not in res.output


def test_detect_fails_when_every_input_is_unreadable(tmp_path):
    bad = tmp_path / "notes.mseed"
    bad.write_text("field notes, not a waveform\n")
    res = quakescan("detect", bad, "--device", "cpu")
    assert res.exit_code == 1, res.output
    assert "nothing could be processed (skipped: unreadable_file 1)" in res.output
