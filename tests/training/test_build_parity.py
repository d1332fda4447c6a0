"""Train/serve parity: a template cut from a 50 Hz or 200 Hz record holds exactly the numbers the
detector's own preparation gives the window at the same grid time (DESIGN.md, "Training and
serving must see the same numbers")."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import UTCDateTime

from quakescan.detector import Detector
from quakescan.detector.windows import grid_windows
from quakescan.training.build import cut_templates

RECORD = "BK.BKS.20170715T104920.mseed"  # tests/data/ncal: HH?, 100 Hz, 90 s, P 30 s in


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(device="cpu", threads=1)  # the shipped model: its spec is what serving uses


def _write_record(data_dir: Path, tmp_path: Path, rate_hz: float) -> tuple[Path, Path]:
    """The real record resampled by ObsPy to rate_hz, and a picks CSV for its P onset."""
    st = obspy.read(str(data_dir / "ncal" / RECORD))
    for tr in st:
        tr.data = tr.data.astype(np.float64)
    st.resample(rate_hz)  # the station now records at rate_hz; its data are what they are
    rec = tmp_path / f"BK.BKS.{int(rate_hz)}hz.mseed"
    st.write(str(rec), format="MSEED", encoding="FLOAT64")
    with open(data_dir / "ncal" / "picks.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == RECORD)
    picks = tmp_path / "picks.csv"
    with open(picks, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    return rec, picks


@pytest.mark.parametrize("rate_hz", [50.0, 200.0])
def test_template_from_resampled_record_equals_the_detector_window(
    detector, data_dir, tmp_path, rate_hz
):
    spec = detector.spec
    rec, picks = _write_record(data_dir, tmp_path, rate_hz)
    pick = UTCDateTime(next(csv.DictReader(open(picks)))["p_time"])
    # A window start on the detector's grid: the last grid time at least 1 s before P.
    step_ns = round(detector.step_s * 1e9)
    start_ns = (pick.ns - 1_000_000_000) // step_ns * step_ns
    pre_onset_s = (pick.ns - start_ns) / 1e9
    window_s = spec.window_samples / spec.sampling_rate_hz
    res = cut_templates(
        [rec],
        None,
        picks,
        window_s=window_s,
        pre_onset_s=pre_onset_s,
        component_order=spec.channel_order,
        sampling_rate_hz=spec.sampling_rate_hz,
        noise_per_record=0,
    )
    assert len(res.events) == 1, res.report.table()
    template = res.events.windows[0]
    assert template.shape == (len(spec.channel_order), spec.window_samples)

    (seg,) = detector.prepare(obspy.read(str(rec)))
    k, off = grid_windows(
        seg.start_ns, seg.n_samples, seg.sampling_rate_hz, spec.window_samples, detector.step_s
    )
    (i,) = np.flatnonzero(k * step_ns == start_ns)
    served = seg.data[:, off[i] : off[i] + spec.window_samples]
    scale = np.abs(served).max()
    assert scale > 0
    np.testing.assert_allclose(template, served, rtol=1e-6, atol=1e-6 * scale)
    # The onset index says where P is in the template, on the same samples.
    assert res.events.p_sample[0] == round(pre_onset_s * spec.sampling_rate_hz)
