"""The Detector on real waveforms with the shipped model, through real ONNX Runtime."""

from __future__ import annotations

import csv

import numpy as np
import obspy
import pytest
from obspy import Stream, UTCDateTime

from quakescan.detector import Detector
from quakescan.detector.model import OnnxModel, shipped_models
from quakescan.detector.stalta import StaLtaParams


@pytest.fixture(scope="module")
def det():
    return Detector(device="cpu", threads=2)


@pytest.fixture(scope="module")
def ncal(data_dir):
    return obspy.read(str(data_dir / "ncal" / "*.mseed"))


@pytest.fixture(scope="module")
def picks(data_dir):
    with open(data_dir / "ncal" / "picks.csv") as f:
        return {
            f"{r['network']}.{r['station']}": UTCDateTime(r["p_time"]) for r in csv.DictReader(f)
        }


def test_default_model_ships_and_declares_itself(det):
    assert set(shipped_models()) == {"convnetquake", "slow-earthquake"}
    s = det.spec
    assert s.name == "convnetquake" and s.class_names[0] == "noise"
    assert det.provider == "CPUExecutionProvider"
    assert s.metrics["test"]["recall"] > 0.9  # held-out metrics travel with the model
    assert s.trained_on


def test_detects_the_p_arrivals_of_real_local_earthquakes(det, ncal, picks):
    dets = det.detect(ncal)
    found = set()
    for d in dets:
        key = ".".join(d.station.split(".")[:2])
        if key in picks and d.start - 2 <= picks[key] <= d.end + 2:
            found.add(key)
    assert len(found) >= 7, f"detected {sorted(found)} of {sorted(picks)}"
    assert all(d.label == "earthquake" for d in dets)


def test_annotate_gives_probability_traces_on_the_grid(det, ncal):
    st = ncal.select(station="BKS")
    ann = det.annotate(st)
    assert {tr.stats.channel for tr in ann} == {"HH_noise", "HH_earthquake"}
    noise, quake = ann.select(channel="HH_noise")[0], ann.select(channel="HH_earthquake")[0]
    assert noise.stats.delta == det.step_s
    assert noise.stats.starttime.timestamp % det.step_s == 0  # absolute grid
    np.testing.assert_allclose(noise.data + quake.data, 1, atol=1e-5)
    t_p = UTCDateTime("2017-07-15T10:49:50.61")
    i = int((t_p - 2 - quake.stats.starttime) / quake.stats.delta)
    assert quake.data[i] > det.trigger_params.on  # a window with the P wave 2 s in
    assert quake.data[:3].max() < 0.5  # quiet start of the record


def test_pieces_equal_a_single_pass(det, ncal):
    st = ncal.select(station="BKS") + ncal.select(station="ACR")
    whole = det.detect(st)
    offsets = [-1, 17.3, 31.05, 44, 61.5, 200]  # seconds after each record's start
    pieces = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        piece = Stream()
        for sta in ("BKS", "ACR"):
            t0 = st.select(station=sta)[0].stats.starttime
            piece += st.select(station=sta).slice(t0 + a, t0 + b - 0.001, nearest_sample=False)
        pieces.append(piece)
    parts = sorted(det.detect_iter(pieces))
    assert len(whole) >= 2
    assert [(d.id, d.end, d.peak_probability) for d in whole] == [
        (d.id, d.end, d.peak_probability) for d in parts
    ]


def test_multi_station_streams_are_grouped_by_station(det, ncal):
    dets = det.detect(ncal)
    stations = {d.station for d in dets}
    assert len(stations) >= 7
    assert all(d.channel_prefix in {"HH", "BH", "EH", "DP", "HN", "SH"} for d in dets)


def test_stalta_runs_through_the_same_pipeline(ncal, picks):
    det = Detector(method="stalta", stalta=StaLtaParams(on=6.0, off=2.0), device="cpu")
    dets = det.detect(ncal)
    assert {d.model for d in dets} == {"stalta"}
    near = {
        ".".join(d.station.split(".")[:2])
        for d in dets
        for k, p in picks.items()
        if abs(d.peak_time - p) < 1.5 and d.station.startswith(k)
    }
    assert len(near) >= 6  # trigger-on within 1.5 s of the analyst's P pick
    # Day-by-day pieces give the same STA/LTA triggers as one pass.
    st = ncal.select(station="BKS")
    t0 = st[0].stats.starttime
    parts = list(
        det.detect_iter(
            [st.slice(t0, t0 + 25 - 0.001, nearest_sample=False), st.slice(t0 + 25, t0 + 200)]
        )
    )
    assert [(d.start, d.end) for d in det.detect(st)] == [(d.start, d.end) for d in parts]


def test_bad_pieces_are_counted_and_the_rest_processed(det, ncal):
    d2 = Detector(det.model)
    st = ncal.select(station="BKS").copy()
    short = (
        ncal.select(station="ACR")
        .copy()
        .trim(
            ncal.select(station="ACR")[0].stats.starttime,
            ncal.select(station="ACR")[0].stats.starttime + 4,
        )
    )
    odd = ncal.select(station="PKD").copy()
    for tr in odd:
        tr.stats.channel = "BH" + {"E": "X", "N": "Y", "Z": "Q"}[tr.stats.channel[-1]]
    dets = d2.detect(st + short + odd)
    assert dets and all(d.station == "BK.BKS." for d in dets)
    assert d2.stats.report.skipped["unknown_channel"] == 3
    assert (
        d2.stats.report.skipped["short_segment"] == 1
    )  # the 4 s of ACR: counted, not silently lost


def test_wrong_model_files_are_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="cannot load"):
        Detector(tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError):
        Detector("no-such-model")


def test_model_info_and_threads():
    m = OnnxModel(device="cpu", threads=1, batch_size=7)
    info = m.info()
    assert info["provider"] == "CPUExecutionProvider" and info["model"] == m.spec.name
    x = np.zeros((20, 3, m.spec.window_samples), np.float32)
    assert m.predict(x).shape == (20, 2)
    with pytest.raises(ValueError, match="batch_size"):
        OnnxModel(batch_size=0)


def test_empty_stream_gives_no_detections(det):
    assert det.detect(Stream()) == []
