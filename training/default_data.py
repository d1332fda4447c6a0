"""Build the training set of quakescan's shipped default model from the shared real data.

    python -m quakescan.training.default_data --shared ../shared/data --out training/data/default_templates.h5

Sources (see training/data/README.md for licences):

- ``ncal/``: 154 local-earthquake records, 90 s at 100 Hz, P pick 30 s in (``ncal/picks.csv``).
  One event window per record and two noise windows from the pre-event part.
- ``stead_sample/waveforms.hdf5``: 50 STEAD traces (60 s, 100 Hz, E,N,Z) at TA.109C. Events
  only: P lies 4-9 s after the trace start, too little pre-P data for a 20 s noise window.
- ``reunion_noise/``: noise only, from YA.UV06 00:00-12:00 UTC (vertical only), away from
  possible events. YA.UV05 and YA.UV06 after noon are held out for the false-alarm test.
- ncal pre-event windows holding seismic signals (``NCAL_PRE_EVENT_SIGNALS``) are dropped.

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

from quakescan.training.build import BuildReport, CutResult, WindowSet, cut_templates, write_cut
from quakescan.training.templates import read_templates

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
# Reunion (volcano, vertical only): training noise from YA.UV06, 00:00-12:00 UTC only. YA.UV05
# (the whole day) and YA.UV06 12:00-24:00 stay out of training for the false-alarm evaluation.
REUNION_STATION = "UV06"
REUNION_HOURS = (0, 12)
REUNION_STRIDE_S = 120.0

# Seismic signals found before the picked P in ncal records, so their pre-event windows are not
# noise: (record, seconds after the record start). Found with a 2-20 Hz STA/LTA (> 3) on the
# pre-event data and confirmed by eye; "early P" marks an onset a few seconds before the pick.
NCAL_PRE_EVENT_SIGNALS = [
    ("NC.MDPB.20121006T104343.mseed", 23.5),  # local event
    ("BG.HVC.20150310T084031.mseed", 11.0),  # local event
    ("BG.SQK.20161214T172724.mseed", 18.3),  # local event
    ("BG.NEG.20110704T160908.mseed", 9.6),  # local event
    ("BG.FUM.20120923T162232.mseed", 6.0),  # emergent local event
    ("NN.TVH1.20110715T002709.mseed", 13.3),  # local event
    ("NP.1845.20080130T015250.mseed", 4.2),  # local event
    ("NP.1845.20080130T015250.mseed", 10.5),  # local event
    ("BG.BUC.20160105T230054.mseed", 27.5),  # early P
    ("BG.PFR.20101113T050621.mseed", 26.8),  # early P
    ("PG.BP.20081103T144340.mseed", 7.3),  # 6 s burst, event or not: not clean noise
    ("NP.1746.20150828T010710.mseed", 12.2),  # small transient, uncertain
    ("NC.CCOB.20160228T175516.mseed", 21.6),  # small transient, uncertain
    ("NC.PHSB.20150903T150148.mseed", 5.6),  # burst, uncertain
]


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


def drop_signal_windows(noise: WindowSet, ncal: Path) -> WindowSet:
    """Noise windows of ncal records without the pre-event signals listed above."""
    import obspy

    marks: dict[str, list[float]] = {}
    for f, t in NCAL_PRE_EVENT_SIGNALS:
        marks.setdefault(f, []).append(t)
    keep = []
    n = noise.windows.shape[-1]
    for i, src in enumerate(noise.source):
        name = Path(src.split(":")[-1]).name
        if name not in marks:
            keep.append(i)
            continue
        st = obspy.read(str(ncal / name))
        row = next(
            r for r in range(noise.windows.shape[1]) if np.abs(noise.windows[i, r]).max() > 0
        )
        comp = COMPONENT_ORDER[row]
        tr = next(tr for tr in st if tr.stats.channel[-1] == comp)
        data = tr.data.astype(np.float32)
        start = next(
            (
                o
                for o in range(len(data) - n + 1)
                if np.array_equal(data[o : o + n], noise.windows[i, row])
            ),
            None,
        )
        if start is None:
            keep.append(i)
            continue
        s0, s1 = start / SAMPLING_RATE_HZ, (start + n) / SAMPLING_RATE_HZ
        # A signal at t touches the window if it starts before its end (+2 s) and its coda
        # (10 s) reaches past its start.
        if not any(s0 - 10.0 <= t <= s1 + 2.0 for t in marks[name]):
            keep.append(i)
    idx = np.asarray(keep, dtype=np.int64)
    log.info("dropped %d ncal noise windows holding pre-event signals", len(noise) - len(idx))
    return WindowSet(
        noise.windows[idx],
        noise.p_sample[idx],
        [noise.source[i] for i in idx],
        [noise.station[i] for i in idx],
        noise.coords[idx],
    )


def reunion_exclusions(st: Stream) -> np.ndarray:
    """Times (Unix s) of possible real events on the Reunion day, kept out of the noise class.

    A sensitive STA/LTA (ObsPy's recursive STA/LTA, 2-20 Hz, on 3.0) coincident at both
    stations within 3 s, or on one station alone above 6: anything that might be an event.
    """
    from obspy.signal.trigger import coincidence_trigger, recursive_sta_lta, trigger_onset

    f = st.copy()
    f.detrend("demean")
    f.filter("bandpass", freqmin=2.0, freqmax=20.0, corners=4)
    times = [
        t["time"].timestamp
        for t in coincidence_trigger("recstalta", 3.0, 1.5, f, 2, sta=0.5, lta=10.0)
    ]
    for tr in f:
        cft = recursive_sta_lta(tr.data.astype(np.float64), 50, 1000)
        for a, _b in trigger_onset(cft, 6.0, 1.5):
            times.append((tr.stats.starttime + a / tr.stats.sampling_rate).timestamp)
    return np.sort(np.asarray(times))


def reunion_noise(shared: Path) -> WindowSet:
    """Vertical-only noise windows (20 s, E and N zero) from YA.UV06, 00:00-12:00 UTC."""
    import obspy

    st = obspy.read(str(shared / "reunion_noise" / "YA.*"))
    st.merge(method=1, fill_value=None)
    excl = reunion_exclusions(st.split())
    tr = st.select(station=REUNION_STATION)[0]
    day0 = UTCDateTime(tr.stats.starttime.date)
    n = int(round(WINDOW_S * SAMPLING_RATE_HZ))
    z = COMPONENT_ORDER.index("Z")
    wins, sources = [], []
    t = day0 + REUNION_HOURS[0] * 3600
    while t + WINDOW_S <= day0 + REUNION_HOURS[1] * 3600:
        t0 = t.timestamp
        t += REUNION_STRIDE_S
        # 60 s before to 120 s after a possible event is not noise.
        if ((excl > t0 - 120.0) & (excl < t0 + WINDOW_S + 60.0)).any():
            continue
        i = int(round((t0 - tr.stats.starttime.timestamp) * SAMPLING_RATE_HZ))
        x = tr.data[i : i + n]
        if len(x) < n or np.ma.is_masked(x) or _flat_run(np.asarray(x)) > 50:
            continue  # a gap, or data held constant (padding) for over 0.5 s
        w = np.zeros((len(COMPONENT_ORDER), n), np.float32)
        w[z] = np.asarray(x, dtype=np.float32)
        wins.append(w)
        sources.append(f"reunion:{tr.id}:{UTCDateTime(t0).strftime('%Y%m%dT%H%M%S')}")
    return WindowSet(
        np.stack(wins),
        np.full(len(wins), -1, np.int64),
        sources,
        [f"{tr.stats.network}.{tr.stats.station}"] * len(wins),
        np.full((len(wins), 3), np.nan),
    )


def _flat_run(x: np.ndarray) -> int:
    """Longest run of identical consecutive samples."""
    same = np.r_[False, np.diff(x) == 0, False]
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


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
    reunion = reunion_noise(shared)
    noise = WindowSet.concat([drop_signal_windows(res_ncal.noise, ncal), reunion])
    report.noise_written = len(noise)
    res = CutResult(
        events=WindowSet.concat([res_ncal.events, res_stead.events]),
        noise=noise,
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
        "sources": [
            "ncal/*.mseed + ncal/picks.csv",
            "stead_sample/waveforms.hdf5 (events)",
            f"reunion_noise YA.{REUNION_STATION} {REUNION_HOURS[0]:02d}-{REUNION_HOURS[1]:02d} UTC (noise, "
            f"every {REUNION_STRIDE_S:g} s, possible events excluded)",
        ],
        "script": "python -m quakescan.training.default_data",
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
