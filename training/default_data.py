"""Build the training set of quakescan's shipped default model from the shared real data.

    python -m training.default_data --shared ../shared/data --out training/data/default_templates.h5

Sources (see training/data/README.md for licences):

- ``ncal/``: 154 local-earthquake records, 90 s at 100 Hz, P pick 30 s in (``ncal/picks.csv``).
  One event window per record and two noise windows from the pre-event part.
- ``stead_sample/waveforms.hdf5``: 50 STEAD traces (60 s, 100 Hz, E,N,Z) at TA.109C. Events
  only: P lies 4-9 s after the trace start, too little pre-P data for a 20 s noise window.

The windows are "context" templates, 20 s long and longer than the model's 10 s window, so that
training can crop real time shifts: the P onset sits 8 s in (STEAD traces with less than 8 s
before P start at the trace start instead, P 4-8 s in; ``earthquakes_p_sample`` records it).
Noise windows are 20 s too, ending at least 2 s before P: starts at 0 s and 8 s of each record.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from pathlib import Path

import h5py
import numpy as np
from obspy import Stream, Trace, UTCDateTime

from training.build import BuildReport, CutResult, WindowSet, cut_templates, write_cut
from training.templates import read_templates

log = logging.getLogger(__name__)

# Context templates: 20 s with P at 8 s; the model window (10 s) is cropped from them.
WINDOW_S = 20.0
PRE_ONSET_S = 8.0
MIN_PRE_ONSET_S = 4.0  # STEAD: P is 4-9 s into each trace
NOISE_MARGIN_S = 2.0
NOISE_PER_RECORD = 2
NOISE_STRIDE_S = 8.0  # ncal: 28 s of pre-event data -> noise windows at 0 s and 8 s
SAMPLING_RATE_HZ = 100.0
COMPONENT_ORDER = "ENZ"


def stead_to_mseed(hdf5: str | Path, out_dir: str | Path) -> Path:
    """Write each STEAD trace as a miniSEED file plus a picks CSV; returns the CSV's path.

    Each dataset earthquake/local/<trace_name> is float32[6000, 3] in E,N,Z order at 100 Hz,
    starting at attrs['trace_start_time'] with P at attrs['p_arrival_sample'].
    """
    hdf5, out_dir = Path(hdf5), Path(out_dir)
    if not hdf5.exists():
        raise FileNotFoundError(f"STEAD file {hdf5} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    picks = out_dir / "picks.csv"
    with h5py.File(hdf5, "r") as f, open(picks, "w", newline="") as out:
        if "earthquake/local" not in f:
            raise ValueError(f"{hdf5}: group 'earthquake/local' is missing")
        writer = csv.writer(out)
        writer.writerow(
            ["file", "network", "station", "p_time", "latitude", "longitude", "depth_km"]
        )
        for name, d in f["earthquake/local"].items():
            a = d.attrs
            data = np.asarray(d[()], dtype=np.float32)
            if data.ndim != 2 or data.shape[1] != 3:
                raise ValueError(f"{hdf5}: {name} has shape {data.shape}; expected (samples, 3)")
            start = UTCDateTime(str(a["trace_start_time"]))
            band = str(a["receiver_type"])
            st = Stream(
                [
                    Trace(
                        data[:, k].copy(),
                        header={
                            "network": str(a["network_code"]),
                            "station": str(a["receiver_code"]),
                            "location": "",
                            "channel": f"{band}{comp}",
                            "starttime": start,
                            "sampling_rate": SAMPLING_RATE_HZ,
                        },
                    )
                    for k, comp in enumerate("ENZ")
                ]
            )
            file = f"{name}.mseed"
            st.write(str(out_dir / file), format="MSEED", encoding="FLOAT32")
            p_time = start + float(a["p_arrival_sample"]) / SAMPLING_RATE_HZ
            writer.writerow(
                [
                    file,
                    a["network_code"],
                    a["receiver_code"],
                    str(p_time),
                    float(a["source_latitude"]),
                    float(a["source_longitude"]),
                    float(a["source_depth_km"]),
                ]
            )
    return picks


def build_default(
    shared_data_dir: str | Path, out_path: str | Path, *, progress: bool = False
) -> BuildReport:
    """Build the default model's templates (ncal + STEAD, 20 s context windows) into out_path."""
    shared = Path(shared_data_dir)
    ncal = shared / "ncal"
    if not (ncal / "picks.csv").exists():
        raise FileNotFoundError(f"{ncal / 'picks.csv'} does not exist (expected the shared data)")
    common = dict(
        window_s=WINDOW_S,
        pre_onset_s=PRE_ONSET_S,
        component_order=COMPONENT_ORDER,
        sampling_rate_hz=SAMPLING_RATE_HZ,
        noise_margin_s=NOISE_MARGIN_S,
        progress=progress,
    )
    res_ncal = cut_templates(
        [ncal / "*.mseed"],
        None,
        ncal / "picks.csv",
        noise_per_record=NOISE_PER_RECORD,
        noise_window_stride_s=NOISE_STRIDE_S,
        **common,
    )
    with tempfile.TemporaryDirectory(prefix="stead_") as tmp:
        picks = stead_to_mseed(shared / "stead_sample" / "waveforms.hdf5", tmp)
        res_stead = cut_templates(
            [Path(tmp) / "*.mseed"],
            None,
            picks,
            noise_per_record=0,
            min_pre_onset_s=MIN_PRE_ONSET_S,
            **common,
        )
    report = res_ncal.report
    report.merge(res_stead.report)
    res = CutResult(
        events=WindowSet.concat([res_ncal.events, res_stead.events]),
        noise=res_ncal.noise,
        report=report,
        sampling_rate_hz=SAMPLING_RATE_HZ,
        component_order=COMPONENT_ORDER,
    )
    params = {
        "window_s": WINDOW_S,
        "pre_onset_s": PRE_ONSET_S,
        "min_pre_onset_s (stead)": MIN_PRE_ONSET_S,
        "sampling_rate_hz": SAMPLING_RATE_HZ,
        "noise_margin_s": NOISE_MARGIN_S,
        "noise_per_record (ncal)": NOISE_PER_RECORD,
        "noise_window_stride_s": NOISE_STRIDE_S,
        "sources": ["ncal/*.mseed + ncal/picks.csv", "stead_sample/waveforms.hdf5 (events)"],
        "script": "python -m training.default_data",
    }
    return write_cut(res, out_path, params=params)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default="../shared/data", help="the shared data folder")
    ap.add_argument("--out", default="training/data/default_templates.h5")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = build_default(args.shared, args.out, progress=True)
    print(report.table())
    t = read_templates(args.out)
    print(f"read_templates: {t.counts()}, windows {t.windows.shape}, dropped {t.dropped}")
    p = t.onset_sample[t.labels > 0]
    print(f"P sample in event windows: min {p.min()}, max {p.max()}")
    print(f"stations: {len(set(t.station))}, size {Path(args.out).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
