"""Build a templates file from continuous waveforms and a catalog (``quakescan templates build``).

The flow, one module per stage:

catalog (picks CSV, origins CSV, QuakeML; ``training.onsets`` over ``detector.refcatalog``) ->
P onsets per station (pick, or origin time plus a straight-ray travel time) -> records (a
waveform file's traces of one station, or one station-day of an SDS archive) -> prepared as the
detector prepares a stream (``training.cut`` over ``detector.prepare``: merge, gaps, channels,
polyphase resampling) -> event windows around each onset and noise windows from the quiet part
(``training.noise``) -> optional k-means location clusters (``training.clusters``) ->
``training.templates.write_templates``. This module runs the flow and counts what it skips.

Windows are raw counts (float32), never filtered: the model filters inside its graph. A window
that would straddle a gap or run past the data is skipped and counted, never zero-filled. The one
exception to "no zeros" is the templates format's own convention: a vertical-only station gets all-zero
horizontal channels.

This is how ConvNetQuake's templates were made (Perol et al. 2018: windows around catalog events,
noise from the quiet time in between, k-means clusters of event locations as classes).
"""

from __future__ import annotations

import json
import logging
import zlib
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from quakescan.detector.prepare import PrepReport, expand_paths, read_waveforms
from quakescan.training.clusters import kmeans_clusters
from quakescan.training.cut import (  # noqa: F401  (SKIP_REASONS, select_channels: public here too)
    REASON_RANK,
    SKIP_REASONS,
    StationData,
    cut_window,
    select_channels,
    station_coverage,
)
from quakescan.training.noise import quiet_starts, spread_choice
from quakescan.training.onsets import (  # noqa: F401  (public names of the builder)
    Onset,
    OnsetCatalog,
    read_catalog,
    read_station_coordinates,
    travel_time_s,
)
from quakescan.training.templates import write_templates
from quakescan.training.windowset import BuildReport, CutResult, WindowAccumulator, WindowSet

log = logging.getLogger(__name__)

BUILDER = "quakescan templates build"
RESAMPLING = "detector.prepare (scipy resample_poly per contiguous piece), where needed"

__all__ = [
    "BUILDER",
    "BuildReport",
    "CutResult",
    "Onset",
    "OnsetCatalog",
    "WindowSet",
    "build_templates",
    "cut_templates",
    "expand_waveforms",
    "kmeans_clusters",
    "read_catalog",
    "read_station_coordinates",
    "travel_time_s",
    "write_cut",
]


def expand_waveforms(waveforms: Sequence[str | Path]) -> list[Path]:
    """Files from paths, folders (every file below) and globs, sorted, without duplicates."""
    unique: dict[Path, Path] = {}
    for p in expand_paths(list(waveforms)):
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _check_params(
    window_s: float,
    pre_onset_s: float,
    min_pre_onset_s: float | None,
    component_order: str,
    sampling_rate_hz: float,
    noise_margin_s: float,
    noise_after_s: float,
    noise_per_record: int,
    noise_window_stride_s: float | None,
    clusters: int | None,
) -> None:
    if not window_s > 0:
        raise ValueError(f"window_s ({window_s}) must be > 0")
    if not 0 <= pre_onset_s < window_s:
        raise ValueError(
            f"pre_onset_s ({pre_onset_s}) must be in [0, window_s={window_s}): "
            "the onset must lie inside the window"
        )
    if min_pre_onset_s is not None and not 0 <= min_pre_onset_s <= pre_onset_s:
        raise ValueError(
            f"min_pre_onset_s ({min_pre_onset_s}) must be in [0, pre_onset_s={pre_onset_s}]"
        )
    if (
        not component_order
        or set(component_order) - set("ZNE")
        or len(set(component_order)) != len(component_order)
    ):
        raise ValueError(
            f"component_order {component_order!r}: expected distinct codes from 'ZNE', e.g. 'ENZ'"
        )
    if not sampling_rate_hz > 0:
        raise ValueError(f"sampling_rate_hz ({sampling_rate_hz}) must be > 0")
    if noise_margin_s < 0 or noise_after_s < 0:
        raise ValueError(
            f"noise_margin_s ({noise_margin_s}) and noise_after_s ({noise_after_s}) must be >= 0"
        )
    if noise_per_record < 0:
        raise ValueError(f"noise_per_record ({noise_per_record}) must be >= 0")
    if noise_window_stride_s is not None and not noise_window_stride_s > 0:
        raise ValueError(f"noise_window_stride_s ({noise_window_stride_s}) must be > 0")
    if clusters is not None and clusters < 1:
        raise ValueError(f"clusters ({clusters}) must be >= 1")


def cut_templates(
    waveforms: Sequence[str | Path] | None,
    sds_root: str | Path | None,
    catalog: str | Path | OnsetCatalog,
    *,
    window_s: float = 10.0,
    pre_onset_s: float = 1.5,
    min_pre_onset_s: float | None = None,
    component_order: str = "ENZ",
    sampling_rate_hz: float = 100.0,
    noise_margin_s: float = 2.0,
    noise_after_s: float = 60.0,
    noise_per_record: int = 2,
    noise_window_stride_s: float | None = None,
    vp_km_s: float = 6.0,
    max_distance_km: float | None = None,
    stations: str | Path | dict[str, tuple[float, float, float]] | None = None,
    max_flat_s: float | None = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> CutResult:
    """Cut event and noise windows (see ``build_templates``) without writing them."""
    _check_params(
        window_s,
        pre_onset_s,
        min_pre_onset_s,
        component_order,
        sampling_rate_hz,
        noise_margin_s,
        noise_after_s,
        noise_per_record,
        noise_window_stride_s,
        None,
    )
    if max_flat_s is not None and not max_flat_s > 0:
        raise ValueError(f"max_flat_s ({max_flat_s}) must be > 0 (or None to keep flat runs)")
    if (not waveforms) == (sds_root is None):
        raise ValueError(
            "give waveform files (waveforms=[...]) or an SDS root (sds_root=), exactly one"
        )
    if isinstance(stations, str | Path):
        stations = read_station_coordinates(stations)
    if not isinstance(catalog, OnsetCatalog):
        catalog = read_catalog(
            catalog, stations=stations, vp_km_s=vp_km_s, max_distance_km=max_distance_km
        )
    rate = float(sampling_rate_hz)
    n = int(round(window_s * rate))
    stride = noise_window_stride_s if noise_window_stride_s is not None else window_s
    by_station = catalog.by_station()
    times = {s: [o.time.timestamp for o in v] for s, v in by_station.items()}
    origin_ts = np.asarray(sorted(t.timestamp for t in catalog.origin_times))
    exclusion = {s: np.unique(np.concatenate([np.asarray(v), origin_ts])) for s, v in times.items()}
    report = BuildReport(catalog_onsets=len(catalog.onsets))
    report.events_skipped = dict(catalog.skipped)
    events, noise = WindowAccumulator(), WindowAccumulator()
    # Best outcome so far of each onset: "" once written, else the most specific skip reason.
    outcome: dict[tuple[str, int], str] = {}
    records_skipped: dict[str, int] = defaultdict(int)
    noise_skipped: dict[str, int] = defaultdict(int)

    def try_event(sid: str, k: int, sd: StationData, source: str) -> None:
        key = (sid, k)
        if outcome.get(key) == "":
            return
        o = by_station[sid][k]
        if sd.reason:
            w, ref, reason = None, None, sd.reason
        else:
            w, ref, reason = cut_window(sd, o.time - pre_onset_s, n)
            if reason == "too_short" and min_pre_onset_s is not None:
                # Start at the data's start instead, if the onset is still far enough in.
                starts = [seg.start for seg in sd.segments if seg.start <= o.time <= seg.end]
                if starts and o.time - max(starts) >= min_pre_onset_s - 0.5 / rate:
                    w, ref, reason = cut_window(sd, max(starts), n)
        if w is None:
            prev = outcome.get(key)
            if prev is None or REASON_RANK[reason] < REASON_RANK[prev]:
                outcome[key] = reason
            log.debug("%s onset %s: skipped (%s) in %s", sid, o.time, reason, source)
            return
        outcome[key] = ""
        p = int(round((o.time - ref) * rate))
        events.add(w, p, source, sid, o.coords)

    def take_noise(
        sid: str, sd: StationData, source: str, limits: tuple[float, float] | None = None
    ) -> None:
        if noise_per_record == 0 or sd.reason or sid not in exclusion:
            return
        spans = station_coverage(sd)
        cands = quiet_starts(
            spans,
            exclusion[sid],
            window_s=window_s,
            margin_s=noise_margin_s,
            after_s=noise_after_s,
            stride_s=stride,
            limits=limits,
        )
        if len(cands) < noise_per_record:
            noise_skipped["not_enough_quiet_data"] += noise_per_record - len(cands)
        rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
        for j in spread_choice(len(cands), noise_per_record, rng):
            w, _, reason = cut_window(sd, UTCDateTime(cands[j]), n)
            if w is None:
                noise_skipped[reason] += 1
                continue
            noise.add(w, -1, source, sid)

    def onsets_in(sid: str, lo: float, hi: float) -> range:
        """Indices of the station's onsets whose window could overlap [lo, hi]."""
        ts = times.get(sid, [])
        return range(bisect_left(ts, lo - window_s), bisect_right(ts, hi + window_s))

    if waveforms:
        files = expand_waveforms(waveforms)
        for path in _progress(files, progress, "records"):
            st = _read(path, records_skipped)
            if st is None:
                continue
            report.records_read += 1
            for sid, traces in _group_by_station(st).items():
                if sid not in by_station:
                    continue
                sd = select_channels(Stream(traces), component_order, rate, max_flat_s)
                lo = min(tr.stats.starttime for tr in traces).timestamp
                hi = max(tr.stats.endtime for tr in traces).timestamp
                for k in onsets_in(sid, lo, hi):
                    try_event(sid, k, sd, path.name)
                take_noise(sid, sd, path.name)
    else:
        from obspy.clients.filesystem.sds import Client

        root = Path(sds_root)
        if not root.is_dir():
            raise FileNotFoundError(f"SDS root {root} is not a folder")
        client = Client(str(root))
        pad = 5.0  # room for resampling edges and sub-sample alignment (s)
        days = sorted(
            {(sid, UTCDateTime(o.time.date).timestamp) for sid, v in by_station.items() for o in v}
        )
        for sid, day in _progress(days, progress, "station-days"):
            net, sta = sid.split(".", 1)
            d0 = UTCDateTime(day)
            source = f"sds:{sid}:{d0.year}.{d0.julday:03d}"
            ts = times[sid]
            got_data = False
            for k in range(bisect_left(ts, day), bisect_left(ts, day + 86400.0)):
                t = by_station[sid][k].time - pre_onset_s
                st = _sds_get(client, net, sta, t - pad, t + window_s + pad, records_skipped)
                if st is None:
                    continue
                got_data |= len(st) > 0
                try_event(sid, k, select_channels(st, component_order, rate, max_flat_s), source)
            if noise_per_record:
                st = _sds_get(client, net, sta, d0, d0 + 86400 + window_s, records_skipped)
                if st is not None and len(st):
                    got_data = True
                    sd = select_channels(st, component_order, rate, max_flat_s)
                    take_noise(sid, sd, source, limits=(day, day + 86400.0))
            report.records_read += got_data
    skipped: dict[str, int] = defaultdict(int, report.events_skipped)
    for sid, v in by_station.items():
        for k in range(len(v)):
            reason = outcome.get((sid, k), "no_data")
            if reason:
                skipped[reason] += 1
    report.events_skipped = {k: v for k, v in skipped.items() if v}
    report.records_skipped = dict(records_skipped)
    report.noise_skipped = dict(noise_skipped)
    c = len(component_order)
    ev, nz = events.done(c, n), noise.done(c, n)
    report.events_written, report.noise_written = len(ev), len(nz)
    if sum(report.events_skipped.values()):
        log.warning("skipped %d event windows: %s", sum(skipped.values()), report.events_skipped)
    return CutResult(ev, nz, report, rate, component_order)


def _progress(items: list, enabled: bool, unit: str) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, unit=f" {unit}", desc="building templates")


def _read(path: Path, skipped: dict[str, int]) -> Stream | None:
    """One record, read by ``detector.prepare.read_waveforms``; unreadable or empty: counted."""
    report = PrepReport()
    st = read_waveforms([path], report)
    if report.skipped:
        skipped["unreadable"] += 1
        return None
    if len(st) == 0:
        log.warning("%s: no traces, skipped", path)
        skipped["empty"] += 1
        return None
    return st


def _sds_get(
    client, net: str, sta: str, t0: UTCDateTime, t1: UTCDateTime, skipped: dict[str, int]
) -> Stream | None:
    try:
        return client.get_waveforms(net, sta, "*", "*", t0, t1, merge=False)
    except Exception as exc:
        log.warning("SDS %s.%s %s-%s: unreadable, skipped (%s)", net, sta, t0, t1, exc)
        skipped["unreadable"] += 1
        return None


def _group_by_station(st: Stream) -> dict[str, list[Trace]]:
    out: dict[str, list[Trace]] = defaultdict(list)
    for tr in st:
        out[f"{tr.stats.network}.{tr.stats.station}"].append(tr)
    return out


def build_templates(
    waveforms: Sequence[str | Path] | None,
    sds_root: str | Path | None,
    catalog: str | Path | OnsetCatalog,
    out: str | Path,
    *,
    window_s: float = 10.0,
    pre_onset_s: float = 1.5,
    min_pre_onset_s: float | None = None,
    component_order: str = "ENZ",
    sampling_rate_hz: float = 100.0,
    noise_margin_s: float = 2.0,
    noise_after_s: float = 60.0,
    noise_per_record: int = 2,
    noise_window_stride_s: float | None = None,
    vp_km_s: float = 6.0,
    max_distance_km: float | None = None,
    stations: str | Path | dict[str, tuple[float, float, float]] | None = None,
    max_flat_s: float | None = 0.5,
    clusters: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> BuildReport:
    """Write a templates file (``read_templates`` format) from waveforms and a catalog.

    waveforms: miniSEED (or any ObsPy format) files, folders or globs; or sds_root: an SDS
    archive (ROOT/YEAR/NET/STA/CHA.D/NET.STA.LOC.CHA.D.YEAR.DOY), read around each onset and
    per station-day for noise. catalog: picks CSV, origins CSV (needs ``stations``) or QuakeML
    (see ``read_catalog``).

    Event windows: float32[n, len(component_order), window_s * sampling_rate_hz] raw counts,
    starting ``pre_onset_s`` before the P onset (``earthquakes_p_sample`` holds the onset's
    index). With ``min_pre_onset_s``, an onset too close to the data's start gets a window that
    starts at the data's start instead, if at least ``min_pre_onset_s`` of data precede it.
    Noise windows: up to ``noise_per_record`` per file (or SDS station-day), on a grid of
    ``noise_window_stride_s`` (default ``window_s``) over the quiet part, chosen spread out and
    seeded; quiet means ending >= ``noise_margin_s`` before each onset at the station (and each
    origin time) and starting >= ``noise_after_s`` after it. Noise comes only from stations
    that the catalog has onsets for. ``clusters``: k-means location classes (``clusters``
    dataset). Windows that straddle a gap or run past the data are skipped and counted; so are
    windows that touch a run of identical values longer than ``max_flat_s`` (filled gaps, dead
    channels; None keeps them).
    """
    _check_params(
        window_s,
        pre_onset_s,
        min_pre_onset_s,
        component_order,
        sampling_rate_hz,
        noise_margin_s,
        noise_after_s,
        noise_per_record,
        noise_window_stride_s,
        clusters,
    )
    if isinstance(stations, str | Path):
        stations = read_station_coordinates(stations)
    if not isinstance(catalog, OnsetCatalog):
        catalog = read_catalog(
            catalog, stations=stations, vp_km_s=vp_km_s, max_distance_km=max_distance_km
        )
    if clusters is not None and any(o.coords is None for o in catalog.onsets):
        n_missing = sum(o.coords is None for o in catalog.onsets)
        raise ValueError(
            f"{catalog.path}: clusters need every event's location; {n_missing} of "
            f"{len(catalog.onsets)} onsets lack one (give QuakeML with origins, an origins CSV, "
            "or picks with latitude/longitude columns)"
        )
    res = cut_templates(
        waveforms,
        sds_root,
        catalog,
        window_s=window_s,
        pre_onset_s=pre_onset_s,
        min_pre_onset_s=min_pre_onset_s,
        component_order=component_order,
        sampling_rate_hz=sampling_rate_hz,
        noise_margin_s=noise_margin_s,
        noise_after_s=noise_after_s,
        noise_per_record=noise_per_record,
        noise_window_stride_s=noise_window_stride_s,
        vp_km_s=vp_km_s,
        max_distance_km=max_distance_km,
        stations=stations,
        max_flat_s=max_flat_s,
        seed=seed,
        progress=progress,
    )
    params = {
        "window_s": window_s,
        "pre_onset_s": pre_onset_s,
        "min_pre_onset_s": min_pre_onset_s,
        "sampling_rate_hz": sampling_rate_hz,
        "noise_margin_s": noise_margin_s,
        "noise_after_s": noise_after_s,
        "noise_per_record": noise_per_record,
        "noise_window_stride_s": noise_window_stride_s,
        "vp_km_s": vp_km_s,
        "max_distance_km": max_distance_km,
        "max_flat_s": max_flat_s,
        "clusters": clusters,
        "seed": seed,
        "catalog": Path(catalog.path).name,
        "waveforms": [str(w) for w in waveforms or []],
        "sds_root": str(sds_root) if sds_root is not None else None,
    }
    return write_cut(res, out, params=params, clusters=clusters, seed=seed)


def write_cut(
    res: CutResult,
    out: str | Path,
    *,
    params: dict,
    clusters: int | None = None,
    seed: int = 0,
) -> BuildReport:
    """Cluster (optional) and write cut windows; raises ValueError if a class is empty."""
    report = res.report
    if len(res.events) == 0 or len(res.noise) == 0:
        raise ValueError(
            f"cannot write {out}: {len(res.events)} event and {len(res.noise)} noise windows "
            "(a templates file needs both)\n" + report.table()
        )
    labels = None
    if clusters is not None:
        labels = kmeans_clusters(res.events.coords, clusters, seed)
        report.clusters = int(labels.max()) + 1
    attrs = {
        "builder": BUILDER,
        "window_s": float(res.events.windows.shape[-1] / res.sampling_rate_hz),
        "filtering": "none: raw counts (the model filters inside its graph)",
        "resampling": RESAMPLING,
        "build_params": json.dumps({k: v for k, v in params.items() if v is not None}),
        "build_counts": json.dumps(
            {
                "events_written": report.events_written,
                "events_skipped": report.events_skipped,
                "noise_written": report.noise_written,
                "noise_skipped": report.noise_skipped,
                "records_skipped": report.records_skipped,
            }
        ),
    }
    path = write_templates(
        out,
        {"earthquakes": res.events.to_class(), "noise": res.noise.to_class()},
        sampling_rate_hz=res.sampling_rate_hz,
        component_order=res.component_order,
        clusters=labels,
        attrs=attrs,
    )
    report.path = path
    report.size_bytes = path.stat().st_size
    return report
