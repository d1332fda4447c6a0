"""Stream preparation: read, group by station, merge, split at gaps, map channels, resample.

What the stream needs comes from the model's spec (sampling rate, channel
order). Per-window detrend, band-pass and normalisation are inside the model
graph, so nothing here filters: the numbers a window holds are the raw counts
the training windows held.

Every problem is counted in a ``PrepReport`` and logged; the rest of the data
is still prepared.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import obspy
import scipy.signal
from obspy import Stream, Trace, UTCDateTime

log = logging.getLogger(__name__)

# Component code -> the model component it stands for. 1/2 are horizontals of
# unknown azimuth; like SeisBench we take 1 as N and 2 as E.
COMPONENT_MAP = {"Z": "Z", "N": "N", "E": "E", "1": "N", "2": "E"}
RATE_TOLERANCE = 1e-4  # relative; 100.00001 Hz is 100 Hz


@dataclass
class Gap:
    station: str
    channel: str
    start: UTCDateTime
    end: UTCDateTime

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass
class PrepReport:
    """What preparation found: gaps, skipped pieces by reason, and messages."""

    gaps: list[Gap] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str, n: int = 1) -> None:
        self.skipped[reason] += n
        self.messages.append(message)
        log.warning(message)

    def merge(self, other: PrepReport) -> None:
        self.gaps += other.gaps
        self.skipped.update(other.skipped)
        self.messages += other.messages


@dataclass
class Segment:
    """Contiguous prepared data of one station.

    data: float32[channels, n] in the spec's channel order at the spec's rate;
    channels the station does not have are zero (``components`` names the real ones).
    """

    station: str  # NET.STA.LOC
    channel_prefix: str  # band + instrument code, e.g. "HH"
    start_ns: int  # time of data[:, 0], ns since the epoch
    sampling_rate_hz: float
    data: np.ndarray
    components: str

    @property
    def n_samples(self) -> int:
        return self.data.shape[1]

    @property
    def start(self) -> UTCDateTime:
        return UTCDateTime(ns=self.start_ns)

    @property
    def end(self) -> UTCDateTime:
        """Time of the last sample."""
        return UTCDateTime(
            ns=self.start_ns + round((self.n_samples - 1) * 1e9 / self.sampling_rate_hz)
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.station, self.channel_prefix)


def station_key(tr: Trace) -> tuple[str, str]:
    """(NET.STA.LOC, band + instrument code) of a trace."""
    s = tr.stats
    return (f"{s.network}.{s.station}.{s.location}", s.channel[:2])


# ------------------------------------------------------------------- reading
def expand_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Files named by paths, globs and directories (searched recursively), sorted."""
    out: list[Path] = []
    for p in paths:
        s = str(p)
        if any(ch in s for ch in "*?["):
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {s!r}")
            out += [Path(m) for m in matches if Path(m).is_file()]
        elif Path(s).is_dir():
            out += sorted(
                q for q in Path(s).rglob("*") if q.is_file() and not q.name.startswith(".")
            )
        elif Path(s).is_file():
            out.append(Path(s))
        else:
            raise FileNotFoundError(f"waveform path {s!r} does not exist")
    return out


def read_waveforms(paths: list[str | os.PathLike], report: PrepReport | None = None) -> Stream:
    """Read files with ObsPy; an unreadable or corrupt file is a counted skip, not an abort."""
    report = report if report is not None else PrepReport()
    st = Stream()
    for path in expand_paths(paths):
        try:
            st += obspy.read(str(path))
        except Exception as exc:  # ObsPy raises many types for corrupt input
            report.skip(
                "unreadable_file",
                f"{path}: cannot read waveform file ({type(exc).__name__}: {exc}); skipped",
            )
    return st


# --------------------------------------------------------------- preparation
def trace_header(tr: Trace, starttime: UTCDateTime | None = None) -> dict:
    """The identifying header of a trace (not npts: a new Trace takes that from its data)."""
    s = tr.stats
    return {
        "network": s.network,
        "station": s.station,
        "location": s.location,
        "channel": s.channel,
        "sampling_rate": s.sampling_rate,
        "starttime": s.starttime if starttime is None else starttime,
    }


def _clean_trace(tr: Trace, report: PrepReport) -> Stream:
    """Split a trace at NaN/inf runs (reported as gaps); returns the finite pieces.

    Integer counts are kept as they are (no float copy of a station-day); they are cast once,
    into the float32 segment.
    """
    data = np.asarray(tr.data)
    if data.dtype.kind not in "fiu":
        report.skip("bad_dtype", f"{tr.id}: data type {data.dtype} is not numeric; trace skipped")
        return Stream()
    if data.dtype.kind in "iu" and not np.ma.isMaskedArray(tr.data):
        return Stream([Trace(data, header=trace_header(tr))])
    x = data.astype(np.float64)
    bad = ~np.isfinite(x)
    if np.ma.isMaskedArray(tr.data):
        bad |= np.ma.getmaskarray(tr.data)
    if not bad.any():
        return Stream([Trace(x, header=trace_header(tr))])
    n_bad = int(bad.sum())
    report.skip("non_finite_samples", f"{tr.id}: {n_bad} NaN/inf samples treated as a gap", n_bad)
    out = Stream()
    rate = tr.stats.sampling_rate
    good = ~bad
    idx = np.flatnonzero(np.diff(np.r_[0, good.astype(np.int8), 0]))  # starts/ends of good runs
    runs = list(zip(idx[::2], idx[1::2], strict=True))
    for a, b in runs:
        piece = Trace(x[a:b].copy(), header=trace_header(tr, tr.stats.starttime + a / rate))
        out.append(piece)
    for (_, b), (c, _) in zip(runs[:-1], runs[1:], strict=True):
        report.gaps.append(
            Gap(
                tr.id.rsplit(".", 1)[0],
                tr.stats.channel,
                tr.stats.starttime + (b - 1) / rate,
                tr.stats.starttime + c / rate,
            )
        )
    return out


def resample(x: np.ndarray, rate_hz: float, target_hz: float) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, zero-phase FIR anti-alias filter)."""
    if abs(rate_hz - target_hz) <= RATE_TOLERANCE * target_hz:
        return x
    frac = Fraction(target_hz / rate_hz).limit_denominator(1000)
    if abs(float(frac) * rate_hz - target_hz) > RATE_TOLERANCE * target_hz:
        raise ValueError(f"cannot resample {rate_hz} Hz to {target_hz} Hz with a rational factor")
    return scipy.signal.resample_poly(x, frac.numerator, frac.denominator)


def _merge_channel(traces: list[Trace], report: PrepReport) -> Stream:
    """Merge one channel's traces; returns contiguous pieces (float64), gaps reported."""
    st = Stream()
    for tr in traces:
        st += _clean_trace(tr, report)
    if not st:
        return st
    rates = {tr.stats.sampling_rate for tr in st}
    if len(rates) > 1:
        # Mixed rates in one channel cannot be merged; keep the most common rate.
        common = Counter(tr.stats.sampling_rate for tr in st).most_common(1)[0][0]
        bad = [tr for tr in st if tr.stats.sampling_rate != common]
        report.skip(
            "mixed_sampling_rate",
            f"{st[0].id}: traces at {sorted(rates)} Hz in one channel; dropped {len(bad)} not at {common} Hz",
            len(bad),
        )
        st = Stream([tr for tr in st if tr.stats.sampling_rate == common])
    # Merge only traces that touch or overlap: two records of one station years apart
    # must stay two pieces (a masked merge would allocate every sample in between).
    traces = sorted(st, key=lambda t: t.stats.starttime.ns)
    dt = 1.0 / traces[0].stats.sampling_rate
    groups: list[list[Trace]] = [[traces[0]]]
    end = traces[0].stats.endtime
    for tr in traces[1:]:
        if tr.stats.starttime - end <= 1.5 * dt:
            groups[-1].append(tr)
        else:
            report.gaps.append(
                Gap(tr.id.rsplit(".", 1)[0], tr.stats.channel, end, tr.stats.starttime)
            )
            groups.append([tr])
        end = max(end, tr.stats.endtime)
    pieces = Stream()
    for g in groups:
        if len(g) == 1:
            pieces.append(g[0])
            continue
        merged = Stream(g)
        try:
            merged.merge(method=1, fill_value="interpolate")  # overlaps resolved; no gaps here
        except Exception as exc:
            report.skip(
                "merge_failed", f"{g[0].id}: traces cannot be merged ({exc}); piece skipped"
            )
            continue
        for tr in merged:
            if np.ma.isMaskedArray(tr.data):
                tr.data = np.ma.getdata(tr.data)
            pieces.append(tr)
    return pieces


def prepare_station(
    traces: list[Trace],
    *,
    sampling_rate_hz: float,
    channel_order: str,
    min_samples: int,
    report: PrepReport,
    min_sampling_rate_hz: float | None = None,
) -> list[Segment]:
    """Prepare one station's traces (same NET.STA.LOC and channel prefix) into segments.

    Segments are the stretches where every component the station has is
    present; each is at least ``min_samples`` long (shorter ones are counted skips).
    Traces sampled below ``min_sampling_rate_hz`` are refused (counted), not upsampled.
    """
    station, prefix = station_key(traces[0])
    by_comp: dict[str, list[Trace]] = defaultdict(list)
    for tr in traces:
        rate = tr.stats.sampling_rate
        if min_sampling_rate_hz is not None and rate < min_sampling_rate_hz * (1 - RATE_TOLERANCE):
            report.skip(
                "sampling_rate_too_low",
                f"{tr.id}: sampled at {rate:g} Hz, below the {min_sampling_rate_hz:g} Hz the model "
                f"needs (its band-pass would lie above the Nyquist frequency); trace refused",
            )
            continue
        code = tr.stats.channel[-1:] if len(tr.stats.channel) >= 3 else ""
        comp = COMPONENT_MAP.get(code)
        if comp is None:
            report.skip(
                "unknown_channel",
                f"{tr.id}: channel code {tr.stats.channel!r} is not Z/N/E/1/2; trace skipped",
            )
            continue
        by_comp[comp].append(tr)
    # N and 1 both present: the oriented one wins.
    for comp, alias in (("N", "1"), ("E", "2")):
        codes = {t.stats.channel[-1] for t in by_comp.get(comp, [])}
        if len(codes) > 1:
            report.skip(
                "duplicate_component", f"{station}.{prefix}: both {comp} and {alias}; using {comp}"
            )
            by_comp[comp] = [t for t in by_comp[comp] if t.stats.channel[-1] == comp]
    if "Z" in channel_order and "Z" not in by_comp:
        if by_comp:
            report.skip(
                "missing_vertical",
                f"{station}.{prefix}: no vertical (Z) component (has {''.join(sorted(by_comp))}); station skipped",
            )
        return []
    wanted = [c for c in channel_order if c in by_comp]
    pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
    dt_ns = 1e9 / sampling_rate_hz
    for comp in wanted:
        merged = _merge_channel(by_comp[comp], report)
        out = []
        for tr in merged:
            try:
                x = np.asarray(tr.data)
                if (
                    abs(tr.stats.sampling_rate - sampling_rate_hz)
                    > RATE_TOLERANCE * sampling_rate_hz
                ):
                    x = resample(x.astype(np.float64), tr.stats.sampling_rate, sampling_rate_hz)
            except ValueError as exc:
                report.skip("bad_sampling_rate", f"{tr.id}: {exc}; trace skipped")
                continue
            out.append((tr.stats.starttime.ns, x))
        if out:
            pieces[comp] = out
    if "Z" in channel_order and "Z" not in pieces:
        return []
    ref = "Z" if "Z" in pieces else next(iter(pieces))
    # Intervals (in samples on the reference grid) where every present component has data.
    t_ref = pieces[ref][0][0]

    def to_idx(t_ns: int) -> int:
        return int(round((t_ns - t_ref) / dt_ns))

    spans: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for comp, lst in pieces.items():
        spans[comp] = [(to_idx(t), to_idx(t) + len(x), x) for t, x in lst]
    common = [(a, b) for a, b, _ in spans[ref]]
    for comp in pieces:
        if comp == ref:
            continue
        nxt = []
        for a, b in common:
            for c, d, _ in spans[comp]:
                lo, hi = max(a, c), min(b, d)
                if hi > lo:
                    nxt.append((lo, hi))
        # Stretches the reference has but this component lacks are gaps of the station.
        common = sorted(nxt)
    segments: list[Segment] = []
    components = "".join(c for c in channel_order if c in pieces)
    for a, b in common:
        n = b - a
        if n < min_samples:
            report.skip(
                "short_segment",
                f"{station}.{prefix}: {n} samples from {UTCDateTime(ns=t_ref + round(a * dt_ns))} "
                f"are shorter than one window ({min_samples} samples); skipped",
            )
            continue
        data = np.zeros((len(channel_order), n), dtype=np.float32)
        for comp in pieces:
            row = channel_order.index(comp)
            for c, d, x in spans[comp]:
                if c <= a and d >= b:
                    data[row] = x[a - c : b - c]
                    break
        segments.append(
            Segment(
                station=station,
                channel_prefix=prefix,
                start_ns=t_ref + round(a * dt_ns),
                sampling_rate_hz=sampling_rate_hz,
                data=data,
                components=components,
            )
        )
    return segments


def group_by_station(stream: Stream) -> dict[tuple[str, str], list[Trace]]:
    """Traces grouped by (NET.STA.LOC, channel prefix), in a stable order."""
    groups: dict[tuple[str, str], list[Trace]] = defaultdict(list)
    for tr in stream:
        groups[station_key(tr)].append(tr)
    return dict(sorted(groups.items()))


def prepare_stream(
    stream: Stream,
    *,
    sampling_rate_hz: float,
    channel_order: str,
    min_samples: int,
    report: PrepReport | None = None,
    min_sampling_rate_hz: float | None = None,
) -> list[Segment]:
    """All stations of a stream, prepared; see ``prepare_station``."""
    report = report if report is not None else PrepReport()
    out: list[Segment] = []
    for traces in group_by_station(stream).values():
        out += prepare_station(
            traces,
            sampling_rate_hz=sampling_rate_hz,
            channel_order=channel_order,
            min_samples=min_samples,
            report=report,
            min_sampling_rate_hz=min_sampling_rate_hz,
        )
    return out
