"""One station's data prepared as the detector prepares it, and windows cut from it.

``select_channels`` picks the channel set a template is cut from and hands its traces to
``detector.prepare.prepare_station``: the same merge, gap split, component mapping (1 -> N,
2 -> E) and polyphase resampling the detector applies to a stream. A template window is then
exactly the window the detector would cut at that time (DESIGN.md: training and serving see
the same numbers).

What the builder adds is about which data to train on, never about the numbers: which
location and band+instrument code to use, that every component must be there (or Z alone),
and that a window touching a run of identical values (a filled gap, a dead channel) is
skipped, not used.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from quakescan.detector.prepare import COMPONENT_MAP, PrepReport, Segment, prepare_station

log = logging.getLogger(__name__)

# The order a skipped window's reasons are reported in: the most specific one wins when several
# records of a station were tried for the same onset.
SKIP_REASONS = (
    "non_finite",
    "all_zero",
    "flat",
    "gap",
    "too_short",
    "missing_component",
    "no_data",
)
REASON_RANK = {r: i for i, r in enumerate(SKIP_REASONS)}

Span = tuple[float, float]  # [start, end) in epoch seconds


@dataclass
class StationData:
    """One station's data, prepared by ``detector.prepare`` onto a component order.

    segments: contiguous float32[channels, n] stretches at the target rate (a horizontal of a
    vertical-only station is all zero). flat: spans (epoch s) of identical values, never cut.
    reason: why the station cannot be used ('' if it can).
    """

    segments: list[Segment]
    reason: str = ""
    label: str = ""  # e.g. BK.BKS..HH?
    flat: list[Span] = field(default_factory=list)


def flat_runs(data: np.ndarray, min_samples: int) -> list[tuple[int, int]]:
    """[i0, i1) index ranges where at least min_samples consecutive values are identical."""
    if len(data) < min_samples:
        return []
    change = np.flatnonzero(np.diff(data) != 0) + 1
    bounds = np.concatenate([[0], change, [len(data)]])
    lengths = np.diff(bounds)
    long = np.flatnonzero(lengths >= min_samples)
    return [(int(bounds[k]), int(bounds[k + 1])) for k in long]


def _flat_spans(traces: list[Trace], max_flat_s: float | None) -> list[Span]:
    """Spans (epoch s) of runs of identical raw values longer than max_flat_s."""
    if max_flat_s is None:
        return []
    out = []
    for tr in traces:
        data = np.ma.getdata(tr.data)
        runs = flat_runs(data, max(2, int(round(max_flat_s * tr.stats.sampling_rate))))
        t0, dt = tr.stats.starttime.timestamp, tr.stats.delta
        out.extend((t0 + i0 * dt, t0 + i1 * dt) for i0, i1 in runs)
    return sorted(out)


def select_channels(
    st: Stream, component_order: str, sampling_rate_hz: float, max_flat_s: float | None = 0.5
) -> StationData:
    """Prepare a station's traces onto ``component_order`` through ``detector.prepare``.

    The first location code (sorted) is used; of several band+instrument codes (HH, HN, ...)
    the one with the most usable components wins, then the higher rate, then seismometer over
    accelerometer. Codes map as the detector maps them (1 -> N, 2 -> E; N/E win over 1/2).
    A station with Z alone gets all-zero horizontals, as the templates format marks a missing component; one missing
    another component is skipped. Runs of identical values longer than ``max_flat_s`` are
    recorded in ``flat`` (see ``cut_window``).
    """
    if len(st) == 0:
        return StationData([], "no_data")
    locs = sorted({tr.stats.location for tr in st})
    if len(locs) > 1:
        log.info("%s: location codes %s; using %r", st[0].id.rsplit(".", 2)[0], locs, locs[0])
    groups: dict[str, dict[str, list[Trace]]] = defaultdict(lambda: defaultdict(list))
    for tr in st:
        cha = tr.stats.channel
        if tr.stats.location != locs[0] or len(cha) != 3 or cha[-1] not in COMPONENT_MAP:
            continue
        groups[cha[:-1]][cha[-1]].append(tr)
    best: tuple | None = None
    for prefix, comps in groups.items():
        mapped = {COMPONENT_MAP[code] for code in comps}
        vertical_only = "Z" in component_order and mapped == {"Z"}
        complete = all(c in mapped for c in component_order) or vertical_only
        rate = max(tr.stats.sampling_rate for trs in comps.values() for tr in trs)
        key = (complete, sum(c in mapped for c in component_order), rate, prefix[-1:] != "N")
        if best is None or key > best[0] or (key == best[0] and prefix < best[1]):
            best = (key, prefix)
    if best is None:
        return StationData([], "missing_component")
    if len(groups) > 1:
        log.info("%s: channel sets %s; using %s?", st[0].stats.station, sorted(groups), best[1])
    (complete, *_), prefix = best
    label = f"{st[0].stats.network}.{st[0].stats.station}.{locs[0]}.{prefix}?"
    if not complete:
        return StationData([], "missing_component", label)
    traces = [tr for trs in groups[prefix].values() for tr in trs]
    report = PrepReport()
    segments = prepare_station(
        traces,
        sampling_rate_hz=sampling_rate_hz,
        channel_order=component_order,
        min_samples=1,
        report=report,
    )
    expected = set("Z" if {COMPONENT_MAP[c] for c in groups[prefix]} == {"Z"} else component_order)
    if not segments or any(set(s.components) != expected for s in segments):
        # A component lost in preparation (an unusable rate, say): not a complete station.
        return StationData([], "missing_component" if report.skipped else "no_data", label)
    return StationData(segments, "", label, _flat_spans(traces, max_flat_s))


def _span(seg: Segment) -> Span:
    t0 = seg.start_ns / 1e9
    return (t0, t0 + seg.n_samples / seg.sampling_rate_hz)


def _overlaps(spans: list[Span], lo: float, hi: float) -> bool:
    return any(a < hi and b > lo for a, b in spans)


def station_coverage(sd: StationData) -> list[Span]:
    """Epoch-second spans where every channel has data, flat runs cut out."""
    spans = [_span(s) for s in sd.segments]
    for f0, f1 in sd.flat:
        nxt = []
        for a, b in spans:
            if f1 <= a or f0 >= b:
                nxt.append((a, b))
                continue
            if f0 > a:
                nxt.append((a, f0))
            if f1 < b:
                nxt.append((f1, b))
        spans = nxt
    return sorted(spans)


def cut_window(
    sd: StationData, start: UTCDateTime, n_samples: int
) -> tuple[np.ndarray | None, UTCDateTime | None, str]:
    """Cut float32[channels, n_samples] starting at the sample nearest ``start``.

    The sample is the one the detector's grid takes for a window at that time
    (``detector.windows.grid_windows``). Returns (window, its first sample's time, '') or
    (None, None, reason) with reason one of SKIP_REASONS.
    """
    t_ns = start.ns
    for seg in sd.segments:
        dt_ns = 1e9 / seg.sampling_rate_hz
        i = int(np.rint((t_ns - seg.start_ns) / dt_ns))
        if i < 0 or i + n_samples > seg.n_samples:
            continue
        first = UTCDateTime(ns=seg.start_ns + round(i * dt_ns))
        lo = first.timestamp
        if _overlaps(sd.flat, lo, lo + n_samples / seg.sampling_rate_hz):
            return None, None, "flat"
        w = np.array(seg.data[:, i : i + n_samples], dtype=np.float32)
        if not np.isfinite(w).all():
            return None, None, "non_finite"
        if not np.any(w):
            return None, None, "all_zero"
        return w, first, ""
    if not sd.segments:
        return None, None, "no_data"
    rate = sd.segments[0].sampling_rate_hz
    lo, hi = start.timestamp, start.timestamp + n_samples / rate
    spans = sorted(_span(s) for s in sd.segments)
    if _overlaps(sd.flat, lo, hi):
        return None, None, "flat"
    if not _overlaps(spans, lo, hi):
        return None, None, "no_data"
    if lo < spans[0][0] - 0.5 / rate or hi > spans[-1][1] + 0.5 / rate:
        return None, None, "too_short"
    return None, None, "gap"
