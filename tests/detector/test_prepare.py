"""Stream preparation on real waveforms: merge, gaps, channel mapping, resampling, bad input."""

from __future__ import annotations

import numpy as np
import obspy
import pytest
from obspy import Stream

from quakescan.detector.prepare import PrepReport, prepare_stream, read_waveforms
from quakescan.detector.windows import grid_windows, iter_batches, window_view

RATE, ORDER, W = 100.0, "ENZ", 1000


def prep(st, report=None, min_samples=W):
    return prepare_stream(
        st, sampling_rate_hz=RATE, channel_order=ORDER, min_samples=min_samples, report=report
    )


@pytest.fixture()
def bks(data_dir):
    return obspy.read(str(data_dir / "ncal" / "BK.BKS.20170715T104920.mseed"))


def test_three_components_in_model_order(bks):
    segs = prep(bks)
    assert len(segs) == 1
    s = segs[0]
    assert (s.station, s.channel_prefix, s.components) == ("BK.BKS.", "HH", "ENZ")
    assert s.data.dtype == np.float32 and s.data.shape == (3, 9001)
    for row, comp in enumerate("ENZ"):
        np.testing.assert_array_equal(
            s.data[row], bks.select(component=comp)[0].data.astype(np.float32)
        )


def test_vertical_only_station_gets_zero_horizontals(data_dir):
    st = obspy.read(str(data_dir / "ncal" / "NC.BBG.20071020T014251.mseed"))
    s = prep(st)[0]
    assert s.components == "Z"
    assert (s.data[:2] == 0).all() and np.abs(s.data[2]).max() > 0


def test_z12_maps_1_to_n_and_2_to_e(bks):
    st = bks.copy()
    for tr in st:
        tr.stats.channel = {"E": "HH2", "N": "HH1", "Z": "HHZ"}[tr.stats.channel[-1]]
    s = prep(st)[0]
    ref = prep(bks)[0]
    np.testing.assert_array_equal(s.data, ref.data)


def test_gap_splits_the_data_and_is_reported(bks):
    st = bks.copy()
    t0 = st[0].stats.starttime
    cut = Stream()
    for tr in st:
        cut += tr.slice(t0, t0 + 40)
        cut += tr.slice(t0 + 45, t0 + 90)
    report = PrepReport()
    segs = prep(cut, report)
    assert len(segs) == 2
    assert {round(g.duration_s, 2) for g in report.gaps} == {5.0}  # last sample to next sample
    # No grid window straddles the gap.
    for s in segs:
        k, off = grid_windows(s.start_ns, s.n_samples, RATE, W, 1.0)
        assert (off + W <= s.n_samples).all()
    assert segs[0].end < segs[1].start


def test_gap_in_one_component_splits_all(bks):
    st = bks.copy()
    z = st.select(component="Z")[0]
    st.remove(z)
    t0 = z.stats.starttime
    st += z.slice(t0, t0 + 50)
    st += z.slice(t0 + 52, t0 + 90)
    segs = prep(st)
    assert len(segs) == 2
    assert all(s.components == "ENZ" for s in segs)


def test_nan_samples_are_a_gap_not_a_number(bks):
    st = bks.copy()
    for tr in st:
        tr.data = tr.data.astype(np.float64)
    st.select(component="N")[0].data[3000:3100] = np.nan
    report = PrepReport()
    segs = prep(st, report)
    assert report.skipped["non_finite_samples"] == 100
    assert all(np.isfinite(s.data).all() for s in segs)
    assert len(segs) == 2


@pytest.mark.parametrize("rate", [50.0, 200.0, 500.0, 40.0])
def test_resampled_to_the_model_rate(bks, rate):
    st = bks.copy()
    for tr in st:
        tr.resample(rate) if rate < 100 else tr.interpolate(rate, method="lanczos", a=8)
    s = prep(st)[0]
    assert s.sampling_rate_hz == 100.0
    assert abs(s.n_samples - 9001) <= 3 * max(1, 100 / rate)
    ref = prep(bks)[0]
    # Same signal after the round trip (compared in the 1-20 Hz band, away from the edges).
    a = ref.data[2, 500:8000].astype(float)
    b = s.data[2, 500:8000].astype(float)
    if rate < 100:  # a 40/50 Hz record has no energy above 20/25 Hz to begin with
        import scipy.signal

        sos = scipy.signal.butter(4, [1, 0.4 * rate], "bandpass", fs=100, output="sos")
        a, b = scipy.signal.sosfiltfilt(sos, a), scipy.signal.sosfiltfilt(sos, b)
    assert np.corrcoef(a, b)[0, 1] > 0.98


def test_unknown_channel_codes_and_missing_vertical_are_counted(bks):
    st = bks.copy()
    extra = st.select(component="Z")[0].copy()
    extra.stats.channel = "HHX"
    st += extra
    report = PrepReport()
    segs = prep(st, report)
    assert len(segs) == 1 and report.skipped["unknown_channel"] == 1
    horizontals = bks.copy().select(component="[EN]")
    report = PrepReport()
    assert prep(horizontals, report) == []
    assert report.skipped["missing_vertical"] == 1
    assert "no vertical" in report.messages[-1]


def test_short_trace_is_a_counted_skip(bks):
    short = bks.copy().trim(bks[0].stats.starttime, bks[0].stats.starttime + 5)
    report = PrepReport()
    assert prep(short, report) == []
    assert report.skipped["short_segment"] == 1
    assert "shorter than one window" in report.messages[0]


def test_corrupt_and_truncated_files_are_skipped_the_rest_is_read(data_dir, tmp_path):
    good = data_dir / "ncal" / "BK.BKS.20170715T104920.mseed"
    raw = good.read_bytes()
    (tmp_path / "garbage.mseed").write_bytes(b"\x00\x01garbage" * 100)
    (tmp_path / "truncated.mseed").write_bytes(raw[: len(raw) // 2 + 77])
    (tmp_path / "good.mseed").write_bytes(raw)
    report = PrepReport()
    st = read_waveforms([tmp_path], report)
    assert report.skipped["unreadable_file"] >= 1
    assert any("garbage.mseed" in m for m in report.messages)
    assert len(st.select(station="BKS")) >= 3  # the good file is all there
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_waveforms([tmp_path / "nope.mseed"])


def test_windows_lie_on_the_absolute_grid_and_agree_across_chunks(bks):
    s = prep(bks)[0]
    k, off = grid_windows(s.start_ns, s.n_samples, RATE, W, 1.0)
    # Window k starts within half a sample of k seconds after the epoch.
    t = s.start_ns + off * 1e7
    assert np.abs(t - k * 1e9).max() <= 0.5e7
    assert (np.diff(k) == 1).all()
    # A second chunk that starts 1234 samples later sees identical windows for the same k.
    sub = s.data[:, 1234:]
    start2 = s.start_ns + 1234 * 10_000_000
    k2, off2 = grid_windows(start2, sub.shape[1], RATE, W, 1.0)
    common = np.intersect1d(k, k2)
    assert len(common) > 50
    v1, v2 = window_view(s.data, W), window_view(np.ascontiguousarray(sub), W)
    for kk in common[::10]:
        np.testing.assert_array_equal(v1[off[k == kk][0]], v2[off2[k2 == kk][0]])


def test_windows_are_views_and_batches_are_exact(bks):
    s = prep(bks)[0]
    v = window_view(s.data, W)
    assert np.shares_memory(v, s.data)
    k, off = grid_windows(s.start_ns, s.n_samples, RATE, W, 0.5)
    got = []
    for _sl, batch in iter_batches(s.data, off, W, 16):
        assert batch.flags.c_contiguous and batch.shape[1:] == (3, W)
        got.append(batch.copy())
    got = np.concatenate(got)
    assert len(got) == len(off)
    np.testing.assert_array_equal(got[7], s.data[:, off[7] : off[7] + W])


def test_records_years_apart_stay_separate_pieces(bks):
    """Two records of one station far apart: two segments and a gap, not years of masked data."""
    later = bks.copy()
    for tr in later:
        tr.stats.starttime += 3 * 365 * 86400
    report = PrepReport()
    segs = prep(bks + later, report)
    assert [s.n_samples for s in segs] == [9001, 9001]
    assert len(report.gaps) == 3  # one per channel
    assert all(g.duration_s > 3 * 365 * 86400 - 100 for g in report.gaps)
