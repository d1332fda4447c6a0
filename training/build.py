"""Build a templates file from continuous waveforms and a catalog (``quakescan templates build``).

The flow, one stage per function:

catalog (picks CSV, origins CSV, QuakeML) -> P onsets per station (pick, or origin time plus a
straight-ray travel time) -> records (a miniSEED file's traces of one station, or one station-day
of an SDS archive) -> channels mapped onto the component order -> event windows around each onset
and noise windows from the quiet part -> optional k-means location clusters -> ``write_templates``.

Windows are raw counts (float32), never filtered: the model filters inside its graph. A window
that would straddle a gap or run past the data is skipped and counted, never zero-filled. The one
exception to "no zeros" is the templates format's own convention: a vertical-only station gets all-zero
horizontal channels.

This is how ConvNetQuake's templates were made (Perol et al. 2018: windows around catalog events,
noise from the quiet time in between, k-means clusters of event locations as classes).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import zlib
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from obspy import Stream, Trace, UTCDateTime
from quakescan.training.templates import write_templates

log = logging.getLogger(__name__)

BUILDER = "quakescan templates build"

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
_REASON_RANK = {r: i for i, r in enumerate(SKIP_REASONS)}

PICK_TIME_COLUMNS = ("p_time", "pick_time", "time")
ORIGIN_TIME_COLUMNS = ("origin_time", "time")
_LAT_COLUMNS = ("latitude", "event_latitude", "origin_latitude", "source_latitude")
_LON_COLUMNS = ("longitude", "event_longitude", "origin_longitude", "source_longitude")
_DEPTH_COLUMNS = ("depth_km", "event_depth_km", "origin_depth_km", "source_depth_km")
_PHASE_COLUMNS = ("phase", "phase_hint")
_KM_PER_DEG = 111.195  # mean Earth radius 6371 km


# ----------------------------------------------------------------------------- catalog
@dataclass(frozen=True)
class Onset:
    """A P onset at one station: from a pick, or an origin time plus a travel-time estimate."""

    station: str  # NET.STA
    time: UTCDateTime
    kind: str  # "pick" or "travel_time"
    event: str  # event id: the same for every station of one event
    coords: tuple[float, float, float] | None = None  # event latitude, longitude (deg), depth (km)


@dataclass
class OnsetCatalog:
    """P onsets per station plus every origin time (origin times also keep noise away)."""

    onsets: list[Onset]
    origin_times: list[UTCDateTime] = field(default_factory=list)
    path: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    kind: str = ""  # "picks csv", "origins csv", "quakeml"

    def by_station(self) -> dict[str, list[Onset]]:
        out: dict[str, list[Onset]] = defaultdict(list)
        for o in self.onsets:
            out[o.station].append(o)
        return {s: sorted(v, key=lambda o: o.time) for s, v in out.items()}


def _first(cols: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in cols), None)


def _time(value: str, path: Path, line: int, column: str) -> UTCDateTime:
    try:
        return UTCDateTime(value)
    except Exception:
        raise ValueError(
            f"{path}, line {line}: column {column!r} has {value!r}; expected an ISO time "
            "such as 2014-08-12T04:01:00.000Z"
        ) from None


def _float(value: str | None, path: Path, line: int, column: str) -> float | None:
    if value is None or value.strip() in ("", "None", "nan", "NaN"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: column {column!r} has {value!r}; expected a number"
        ) from None


def _station_id(value: str) -> str:
    """NET.STA from NET.STA, NET.STA.LOC or NET.STA.LOC.CHA."""
    parts = value.strip().split(".")
    return f"{parts[0]}.{parts[1]}" if len(parts) >= 2 else ""


def read_station_coordinates(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """Station coordinates {NET.STA: (latitude deg, longitude deg, elevation m)}.

    From a CSV with columns ``id`` (NET.STA, NET.STA.LOC or NET.STA.LOC.CHA; or ``network`` and
    ``station``), ``latitude``, ``longitude`` and optionally ``elevation`` / ``elevation_m``, or
    from StationXML (anything else ObsPy's ``read_inventory`` reads).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"station file {path} does not exist")
    out: dict[str, tuple[float, float, float]] = {}
    if path.suffix.lower() in (".csv", ".txt"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in reader.fieldnames or []]
            reader.fieldnames = cols
            has_id = "id" in cols or ("network" in cols and "station" in cols)
            missing = [c for c in ("latitude", "longitude") if c not in cols]
            if not has_id or missing:
                need = (["id (or network and station)"] if not has_id else []) + missing
                raise ValueError(
                    f"{path}: station CSV lacks column(s) {', '.join(need)} "
                    f"(found: {', '.join(cols) or 'nothing'})"
                )
            for line, row in enumerate(reader, start=2):
                sid = (
                    _station_id(row["id"])
                    if "id" in cols
                    else f"{row['network'].strip()}.{row['station'].strip()}"
                )
                if not sid:
                    raise ValueError(
                        f"{path}, line {line}: station id {row.get('id')!r}; expected NET.STA"
                    )
                lat = _float(row["latitude"], path, line, "latitude")
                lon = _float(row["longitude"], path, line, "longitude")
                if lat is None or lon is None:
                    raise ValueError(f"{path}, line {line}: station {sid} has no coordinates")
                elev_col = _first(cols, ("elevation_m", "elevation"))
                elev = _float(row[elev_col], path, line, elev_col) if elev_col else None
                out[sid] = (lat, lon, elev or 0.0)
        return out
    from obspy import read_inventory

    try:
        inv = read_inventory(str(path))
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable StationXML file ({exc}); or give a CSV with columns "
            "id,latitude,longitude"
        ) from None
    for net in inv:
        for sta in net:
            out.setdefault(
                f"{net.code}.{sta.code}", (sta.latitude, sta.longitude, sta.elevation or 0.0)
            )
    return out


def travel_time_s(
    origin: tuple[float, float, float], station: tuple[float, float, float], vp_km_s: float
) -> tuple[float, float]:
    """Straight-ray P travel time (s) and epicentral distance (km).

    origin: (latitude deg, longitude deg, depth km); station: (latitude, longitude, elevation m).
    Hypocentral distance = sqrt(epicentral^2 + (depth + elevation)^2), at a constant vp_km_s.
    """
    from obspy.geodetics import gps2dist_azimuth

    epi_km = gps2dist_azimuth(origin[0], origin[1], station[0], station[1])[0] / 1000.0
    vertical_km = origin[2] + station[2] / 1000.0
    return math.hypot(epi_km, vertical_km) / vp_km_s, epi_km


def _onsets_from_origin(
    event: str,
    t0: UTCDateTime,
    coords: tuple[float, float, float],
    stations: dict[str, tuple[float, float, float]],
    vp_km_s: float,
    max_distance_km: float | None,
) -> list[Onset]:
    out = []
    for sid, sc in stations.items():
        tt, epi = travel_time_s(coords, sc, vp_km_s)
        if max_distance_km is not None and epi > max_distance_km:
            continue
        out.append(Onset(sid, t0 + tt, "travel_time", event, coords))
    return out


def read_catalog(
    path: str | Path,
    *,
    stations: dict[str, tuple[float, float, float]] | str | Path | None = None,
    vp_km_s: float = 6.0,
    max_distance_km: float | None = None,
) -> OnsetCatalog:
    """P onsets per station from a catalog file.

    - CSV of picks: a pick time column (``p_time``, ``pick_time`` or ``time``) and the station as
      ``network`` + ``station`` columns or ``station`` in NET.STA form (e.g. the PhaseNet
      ``picks.csv``). Optional: ``phase`` (rows that are not P are ignored), ``event_id``,
      ``origin_time``, event ``latitude``/``longitude``/``depth_km`` (for clusters).
    - CSV of origins (no station column): ``time`` or ``origin_time``, ``latitude``,
      ``longitude``, optional ``depth_km``; needs ``stations`` for straight-ray P travel times.
    - QuakeML: P picks where an event has them, else its origin plus travel times to ``stations``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalog {path} does not exist")
    if isinstance(stations, str | Path):
        stations = read_station_coordinates(stations)
    if not vp_km_s > 0:
        raise ValueError(f"vp_km_s ({vp_km_s}) must be > 0")
    if path.suffix.lower() in (".csv", ".txt"):
        return _read_csv_catalog(path, stations, vp_km_s, max_distance_km)
    return _read_quakeml(path, stations, vp_km_s, max_distance_km)


def _read_csv_catalog(
    path: Path,
    stations: dict[str, tuple[float, float, float]] | None,
    vp_km_s: float,
    max_distance_km: float | None,
) -> OnsetCatalog:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        rows = list(reader)
    found = ", ".join(cols) or "nothing"
    has_station = "station" in cols
    lat_c, lon_c, dep_c = (
        _first(cols, _LAT_COLUMNS),
        _first(cols, _LON_COLUMNS),
        _first(cols, _DEPTH_COLUMNS),
    )
    cat = OnsetCatalog(onsets=[], path=str(path))
    skipped: dict[str, int] = defaultdict(int)

    def coords_of(row: dict, line: int) -> tuple[float, float, float] | None:
        if not (lat_c and lon_c):
            return None
        lat = _float(row[lat_c], path, line, lat_c)
        lon = _float(row[lon_c], path, line, lon_c)
        if lat is None or lon is None:
            return None
        dep = _float(row[dep_c], path, line, dep_c) if dep_c else None
        return (lat, lon, dep or 0.0)

    if has_station:
        cat.kind = "picks csv"
        time_c = _first(cols, PICK_TIME_COLUMNS)
        if time_c is None:
            raise ValueError(
                f"{path}: picks catalog has no pick time column; expected one of "
                f"{', '.join(PICK_TIME_COLUMNS)} (found: {found})"
            )
        phase_c = _first(cols, _PHASE_COLUMNS)
        origin_c = "origin_time" if "origin_time" in cols and time_c != "origin_time" else None
        for line, row in enumerate(rows, start=2):
            if phase_c and not (row[phase_c] or "").strip().upper().startswith("P"):
                skipped["not_p_phase"] += 1
                continue
            station = (row["station"] or "").strip()
            if "." in station:
                sid = _station_id(station)
            elif "network" in cols:
                sid = f"{(row['network'] or '').strip()}.{station}"
            else:
                sid = ""
            if not sid or sid.startswith(".") or sid.endswith("."):
                raise ValueError(
                    f"{path}, line {line}: station {row['station']!r}; expected NET.STA "
                    "(or separate network and station columns)"
                )
            value = (row[time_c] or "").strip()
            if not value:
                skipped["no_pick_time"] += 1
                continue
            event = (row.get("event_id") or "").strip() or f"{path.name}:{line}"
            cat.onsets.append(
                Onset(sid, _time(value, path, line, time_c), "pick", event, coords_of(row, line))
            )
            if origin_c and (row[origin_c] or "").strip():
                cat.origin_times.append(_time(row[origin_c], path, line, origin_c))
    elif lat_c and lon_c:
        cat.kind = "origins csv"
        time_c = _first(cols, ORIGIN_TIME_COLUMNS)
        if time_c is None:
            raise ValueError(
                f"{path}: origins catalog has no origin time column; expected one of "
                f"{', '.join(ORIGIN_TIME_COLUMNS)} (found: {found})"
            )
        if not stations:
            raise ValueError(
                f"{path} is a catalog of origins (no station column): P travel times need "
                "station coordinates (stations=..., --stations FILE)"
            )
        for line, row in enumerate(rows, start=2):
            value = (row[time_c] or "").strip()
            c = coords_of(row, line)
            if not value or c is None:
                skipped["no_origin"] += 1
                continue
            t0 = _time(value, path, line, time_c)
            event = (row.get("event_id") or "").strip() or f"{path.name}:{line}"
            cat.origin_times.append(t0)
            cat.onsets.extend(_onsets_from_origin(event, t0, c, stations, vp_km_s, max_distance_km))
    else:
        raise ValueError(
            f"{path}: cannot tell the catalog's kind; expected picks (a station column, or network "
            f"and station, plus one of {', '.join(PICK_TIME_COLUMNS)}) or origins (one of "
            f"{', '.join(ORIGIN_TIME_COLUMNS)} plus latitude and longitude) (found: {found})"
        )
    cat.skipped = dict(skipped)
    return cat


def _read_quakeml(
    path: Path,
    stations: dict[str, tuple[float, float, float]] | None,
    vp_km_s: float,
    max_distance_km: float | None,
) -> OnsetCatalog:
    from obspy import read_events

    try:
        events = read_events(str(path))
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable QuakeML catalog ({exc}); or give a CSV of picks or origins"
        ) from None
    cat = OnsetCatalog(onsets=[], path=str(path), kind="quakeml")
    skipped: dict[str, int] = defaultdict(int)
    for i, ev in enumerate(events):
        eid = str(ev.resource_id.id) if ev.resource_id else f"{path.name}:{i}"
        origin = ev.preferred_origin() or (ev.origins[0] if ev.origins else None)
        coords = None
        if origin is not None and origin.latitude is not None and origin.longitude is not None:
            depth_km = (origin.depth or 0.0) / 1000.0  # QuakeML depth is in metres
            coords = (float(origin.latitude), float(origin.longitude), depth_km)
        if origin is not None and origin.time is not None:
            cat.origin_times.append(origin.time)
        # A pick's phase is its phase_hint, or the phase of an arrival that refers to it.
        arrival_phase = {}
        for o in ev.origins:
            for a in o.arrivals:
                if a.pick_id is not None and a.phase:
                    arrival_phase[str(a.pick_id.id)] = a.phase
        first_p: dict[str, UTCDateTime] = {}
        for p in ev.picks:
            phase = p.phase_hint or arrival_phase.get(str(p.resource_id.id), "")
            wid = p.waveform_id
            if not str(phase).upper().startswith("P") or wid is None or p.time is None:
                continue
            sid = f"{wid.network_code or ''}.{wid.station_code or ''}"
            if sid not in first_p or p.time < first_p[sid]:
                first_p[sid] = p.time
        if first_p:
            cat.onsets.extend(Onset(s, t, "pick", eid, coords) for s, t in first_p.items())
        elif origin is not None and origin.time is not None and coords and stations:
            cat.onsets.extend(
                _onsets_from_origin(eid, origin.time, coords, stations, vp_km_s, max_distance_km)
            )
        elif origin is not None and coords:
            skipped["no_pick_no_station_coordinates"] += 1
        else:
            skipped["no_pick_no_origin"] += 1
    if skipped:
        log.warning("%s: events without usable P onsets: %s", path, dict(skipped))
    cat.skipped = dict(skipped)
    return cat


# ----------------------------------------------------------------------------- waveforms
def expand_waveforms(waveforms: Sequence[str | Path]) -> list[Path]:
    """Files from paths, folders (every file below) and globs, sorted, without duplicates."""
    out: list[Path] = []
    for w in waveforms:
        p = Path(w)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(q) for q in glob.glob(str(w), recursive=True) if Path(q).is_file())
        if not found:
            raise FileNotFoundError(f"no waveform files match {str(w)!r}")
        out.extend(found)
    unique: dict[Path, Path] = {}
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


_COMPONENT_CODES = {"Z": "Z", "N": "N", "E": "E", "1": "N", "2": "E"}


@dataclass
class StationData:
    """One station's traces mapped onto a component order.

    channels: {component: contiguous traces at the target rate}; an empty list for a horizontal
    of a vertical-only station (all-zero channel). reason: why it cannot be used ('' if it can).
    """

    channels: dict[str, list[Trace]]
    reason: str = ""
    label: str = ""  # e.g. BK.BKS..HH?
    flat: list[tuple[float, float]] = field(default_factory=list)  # epoch s, cut out as gaps


def _flat_runs(data: np.ndarray, min_samples: int) -> list[tuple[int, int]]:
    """[i0, i1) index ranges where at least min_samples consecutive values are identical."""
    if len(data) < min_samples:
        return []
    change = np.flatnonzero(np.diff(data) != 0) + 1
    bounds = np.concatenate([[0], change, [len(data)]])
    lengths = np.diff(bounds)
    long = np.flatnonzero(lengths >= min_samples)
    return [(int(bounds[k]), int(bounds[k + 1])) for k in long]


def _prepare(
    traces: list[Trace], sampling_rate_hz: float, max_flat_s: float | None
) -> tuple[list[Trace], list[tuple[float, float]]]:
    """Contiguous pieces of one channel at the target rate, and the flat spans cut out of them.

    Touching traces are merged, gaps split them. A run of identical values longer than
    ``max_flat_s`` is filled data (a zero- or edge-padded gap) or a dead channel, never signal:
    it is cut out and treated as a gap. Each piece is then resampled if its rate differs.
    """
    st = Stream(traces=[tr.copy() for tr in traces])
    try:
        st.merge(method=1, fill_value=None)
        st = st.split()
    except Exception as exc:  # differing rates for one id, unmergeable overlaps
        log.warning("%s: cannot merge traces (%s); using them unmerged", traces[0].id, exc)
    pieces, flat = [], []
    for tr in st:
        runs = []
        if max_flat_s is not None:
            runs = _flat_runs(tr.data, max(2, int(round(max_flat_s * tr.stats.sampling_rate))))
        if not runs:
            pieces.append(tr)
            continue
        t0, dt = tr.stats.starttime, tr.stats.delta
        keep_from = 0
        for i0, i1 in runs:
            flat.append(((t0 + i0 * dt).timestamp, (t0 + i1 * dt).timestamp))
            if i0 > keep_from:
                pieces.append(_slice(tr, keep_from, i0))
            keep_from = i1
        if keep_from < tr.stats.npts:
            pieces.append(_slice(tr, keep_from, tr.stats.npts))
    out = []
    for tr in pieces:
        if tr.stats.npts < 2:
            continue
        if abs(tr.stats.sampling_rate - sampling_rate_hz) > 1e-6 * sampling_rate_hz:
            # FFT resampling (band-limited, no extra filter) of each contiguous piece.
            tr.data = tr.data.astype(np.float64)
            tr.resample(sampling_rate_hz)
        out.append(tr)
    return out, flat


def _slice(tr: Trace, i0: int, i1: int) -> Trace:
    start = tr.stats.starttime + i0 * tr.stats.delta
    out = Trace(tr.data[i0:i1].copy(), header={k: v for k, v in tr.stats.items() if k != "npts"})
    out.stats.starttime = start
    return out


def select_channels(
    st: Stream, component_order: str, sampling_rate_hz: float, max_flat_s: float | None = 0.5
) -> StationData:
    """Map a station's traces onto ``component_order``.

    E/N/Z codes map directly, 1 -> N and 2 -> E (only where no N/E channel exists). The first
    location code (sorted) is used; of several band+instrument codes (HH, HN, ...) the one with
    the most usable components wins, then the higher rate, then seismometer over accelerometer.
    A station with Z alone gets empty (all-zero) horizontals, as the templates format marks a missing component.
    Runs of identical values longer than ``max_flat_s`` are cut out (see ``_prepare``).
    """
    if len(st) == 0:
        return StationData({}, "no_data")
    locs = sorted({tr.stats.location for tr in st})
    if len(locs) > 1:
        log.info("%s: location codes %s; using %r", st[0].id.rsplit(".", 2)[0], locs, locs[0])
    groups: dict[str, dict[str, list[Trace]]] = defaultdict(lambda: defaultdict(list))
    for tr in st:
        cha = tr.stats.channel
        if tr.stats.location != locs[0] or len(cha) < 2 or cha[-1] not in _COMPONENT_CODES:
            continue
        groups[cha[:-1]][cha[-1]].append(tr)
    best: tuple | None = None
    for prefix, comps in groups.items():
        mapped: dict[str, list[Trace]] = {}
        for code in ("Z", "N", "E", "1", "2"):
            if code in comps and _COMPONENT_CODES[code] not in mapped:
                mapped[_COMPONENT_CODES[code]] = comps[code]
        horizontals = [c for c in component_order if c != "Z"]
        vertical_only = "Z" in component_order and "Z" in mapped and not ({"N", "E"} & set(mapped))
        complete = all(c in mapped for c in component_order) or vertical_only
        rate = max(tr.stats.sampling_rate for trs in mapped.values() for tr in trs)
        key = (complete, sum(c in mapped for c in component_order), rate, prefix[-1:] != "N")
        if best is None or key > best[0] or (key == best[0] and prefix < best[1]):
            best = (key, prefix, mapped, vertical_only, horizontals)
    if best is None:
        return StationData({}, "missing_component")
    if len(groups) > 1:
        log.info("%s: channel sets %s; using %s?", st[0].stats.station, sorted(groups), best[1])
    (complete, *_), prefix, mapped, vertical_only, horizontals = best
    label = f"{st[0].stats.network}.{st[0].stats.station}.{locs[0]}.{prefix}?"
    if not complete:
        return StationData({}, "missing_component", label)
    channels, flat = {}, []
    for c in component_order:
        if vertical_only and c in horizontals:
            channels[c] = []
        else:
            channels[c], f = _prepare(mapped[c], sampling_rate_hz, max_flat_s)
            flat.extend(f)
    return StationData(channels, "", label, sorted(flat))


def _coverage(traces: list[Trace], rate: float) -> list[tuple[float, float]]:
    """Union of the pieces' [start, end) in epoch seconds, end = start + npts / rate."""
    spans = sorted(
        (tr.stats.starttime.timestamp, tr.stats.starttime.timestamp + tr.stats.npts / rate)
        for tr in traces
    )
    out: list[list[float]] = []
    for a, b in spans:
        if out and a <= out[-1][1] + 0.5 / rate:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _intersect(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def station_coverage(sd: StationData, rate: float) -> list[tuple[float, float]]:
    """Epoch-second spans where every non-zero channel has contiguous data."""
    spans: list[tuple[float, float]] | None = None
    for traces in sd.channels.values():
        if not traces:
            continue
        cov = _coverage(traces, rate)
        spans = cov if spans is None else _intersect(spans, cov)
    return spans or []


def cut_window(
    sd: StationData, start: UTCDateTime, n_samples: int, rate: float
) -> tuple[np.ndarray | None, UTCDateTime | None, str]:
    """Cut float32[channels, n_samples] starting at the sample nearest ``start``.

    Returns (window, the first sample's time on the reference channel, '') or
    (None, None, reason) with reason one of SKIP_REASONS.
    """
    rows: list[np.ndarray | None] = []
    ref_start: UTCDateTime | None = None
    reasons: list[str] = []
    for comp, traces in sd.channels.items():
        if not traces:
            rows.append(None)
            continue
        got = None
        for tr in traces:
            i = int(round((start - tr.stats.starttime) * rate))
            if i >= 0 and i + n_samples <= tr.stats.npts:
                got = np.asarray(tr.data[i : i + n_samples], dtype=np.float32)
                if ref_start is None or comp == "Z":
                    ref_start = tr.stats.starttime + i / rate
                break
        if got is None:
            lo, hi = start.timestamp, start.timestamp + n_samples / rate
            if any(a < hi and b > lo for a, b in sd.flat):
                reasons.append("flat")
            else:
                reasons.append(_classify_missing(traces, start, n_samples, rate))
        rows.append(got)
    if reasons:
        if all(r == "no_data" for r in reasons) and len(reasons) == sum(
            1 for t in sd.channels.values() if t
        ):
            return None, None, "no_data"
        specific = [r for r in reasons if r != "no_data"] or ["gap"]
        return None, None, min(specific, key=_REASON_RANK.__getitem__)
    w = np.zeros((len(rows), n_samples), dtype=np.float32)
    for k, r in enumerate(rows):
        if r is not None:
            w[k] = r
    if not np.isfinite(w).all():
        return None, None, "non_finite"
    if not np.any(w):
        return None, None, "all_zero"
    return w, ref_start, ""


def _classify_missing(traces: list[Trace], start: UTCDateTime, n: int, rate: float) -> str:
    lo, hi = start.timestamp, start.timestamp + n / rate
    spans = _coverage(traces, rate)
    if not any(a < hi and b > lo for a, b in spans):
        return "no_data"
    if lo < spans[0][0] - 0.5 / rate or hi > spans[-1][1] + 0.5 / rate:
        return "too_short"
    return "gap"


# ----------------------------------------------------------------------------- noise
def quiet_starts(
    spans: list[tuple[float, float]],
    exclusion: np.ndarray,
    *,
    window_s: float,
    margin_s: float,
    after_s: float,
    stride_s: float,
    limits: tuple[float, float] | None = None,
) -> list[float]:
    """Candidate noise window starts (epoch s) on a ``stride_s`` grid from each quiet span's start.

    A window [s, s + window_s) is quiet when it ends at least ``margin_s`` before every time in
    ``exclusion`` (sorted epoch s) and starts at least ``after_s`` after every earlier one.
    """
    out: list[float] = []
    tol = 1e-6
    for a, b in spans:
        lo, hi = a, b - window_s
        if limits is not None:
            lo, hi = max(lo, limits[0]), min(hi, limits[1])
        if hi < lo - tol:
            continue
        # Forbidden starts (t - margin - window, t + after) of the times that matter here.
        i0 = bisect_left(exclusion, lo - after_s)
        i1 = bisect_right(exclusion, hi + margin_s + window_s)
        allowed = [(lo, hi)]
        for t in exclusion[i0:i1]:
            f0, f1 = t - margin_s - window_s, t + after_s
            nxt = []
            for x, y in allowed:
                if f0 > x - tol:
                    nxt.append((x, min(y, f0)))
                if f1 < y + tol:
                    nxt.append((max(x, f1), y))
            allowed = [(x, y) for x, y in nxt if y >= x - tol]
        for x, y in allowed:
            k = int(math.floor((y - x) / stride_s + tol)) + 1
            out.extend(x + j * stride_s for j in range(k))
    return out


def spread_choice(n_candidates: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n candidate indices spread over the list: one at random from each of n equal parts."""
    if n_candidates <= n:
        return np.arange(n_candidates)
    parts = np.array_split(np.arange(n_candidates), n)
    return np.array([p[rng.integers(len(p))] for p in parts])


# ----------------------------------------------------------------------------- builder
@dataclass
class BuildReport:
    """What a build wrote and skipped (every skip is counted under its reason)."""

    path: Path | None = None
    catalog_onsets: int = 0
    records_read: int = 0
    records_skipped: dict[str, int] = field(default_factory=dict)  # e.g. unreadable files
    events_written: int = 0
    events_skipped: dict[str, int] = field(default_factory=dict)
    noise_written: int = 0
    noise_skipped: dict[str, int] = field(default_factory=dict)
    clusters: int | None = None
    size_bytes: int = 0

    def table(self) -> str:
        """A short plain-text summary: written, then skipped by reason."""
        rows = [
            ("catalog onsets", self.catalog_onsets),
            ("records read", self.records_read),
            *((f"records skipped: {k}", v) for k, v in sorted(self.records_skipped.items())),
            ("event windows written", self.events_written),
            *((f"events skipped: {k}", v) for k, v in sorted(self.events_skipped.items())),
            ("noise windows written", self.noise_written),
            *((f"noise skipped: {k}", v) for k, v in sorted(self.noise_skipped.items())),
        ]
        if self.clusters is not None:
            rows.append(("location clusters", self.clusters))
        if self.path is not None:
            rows.append((f"written to {self.path}", f"{self.size_bytes / 1e6:.2f} MB"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def merge(self, other: BuildReport) -> None:
        """Add another build's counts to this one (used to concatenate sets)."""
        self.catalog_onsets += other.catalog_onsets
        self.records_read += other.records_read
        self.events_written += other.events_written
        self.noise_written += other.noise_written
        for mine, theirs in (
            (self.records_skipped, other.records_skipped),
            (self.events_skipped, other.events_skipped),
            (self.noise_skipped, other.noise_skipped),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


@dataclass
class WindowSet:
    """Windows of one class: windows float32[n, channels, samples], p_sample int64[n] (-1 noise),
    source and station str[n], coords float64[n, 3] (event lat, lon, depth km; NaN if unknown)."""

    windows: np.ndarray
    p_sample: np.ndarray
    source: list[str]
    station: list[str]
    coords: np.ndarray

    @classmethod
    def empty(cls, channels: int, samples: int) -> WindowSet:
        return cls(
            np.zeros((0, channels, samples), np.float32),
            np.zeros(0, np.int64),
            [],
            [],
            np.zeros((0, 3)),
        )

    def __len__(self) -> int:
        return len(self.p_sample)

    def to_class(self) -> dict[str, np.ndarray | list[str]]:
        return {
            "windows": self.windows,
            "p_sample": self.p_sample,
            "source": self.source,
            "station": self.station,
        }

    @staticmethod
    def concat(sets: Sequence[WindowSet]) -> WindowSet:
        return WindowSet(
            np.concatenate([s.windows for s in sets]),
            np.concatenate([s.p_sample for s in sets]),
            [x for s in sets for x in s.source],
            [x for s in sets for x in s.station],
            np.concatenate([s.coords for s in sets]),
        )


@dataclass
class CutResult:
    """Event and noise windows cut from the data, before clustering and writing."""

    events: WindowSet
    noise: WindowSet
    report: BuildReport
    sampling_rate_hz: float
    component_order: str


class _Acc:
    """Growing lists of windows for one class."""

    def __init__(self) -> None:
        self.w: list[np.ndarray] = []
        self.p: list[int] = []
        self.src: list[str] = []
        self.sta: list[str] = []
        self.coords: list[tuple[float, float, float]] = []

    def add(self, w: np.ndarray, p: int, src: str, sta: str, coords=None) -> None:
        self.w.append(w)
        self.p.append(p)
        self.src.append(src)
        self.sta.append(sta)
        self.coords.append(coords if coords is not None else (np.nan, np.nan, np.nan))

    def done(self, channels: int, samples: int) -> WindowSet:
        if not self.w:
            return WindowSet.empty(channels, samples)
        return WindowSet(
            np.stack(self.w).astype(np.float32),
            np.asarray(self.p, np.int64),
            self.src,
            self.sta,
            np.asarray(self.coords, np.float64).reshape(-1, 3),
        )


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
    events, noise = _Acc(), _Acc()
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
            w, ref, reason = cut_window(sd, o.time - pre_onset_s, n, rate)
            if reason == "too_short" and min_pre_onset_s is not None:
                # Start at the data's start instead, if the onset is still far enough in.
                starts = [
                    tr.stats.starttime
                    for trs in sd.channels.values()
                    for tr in trs
                    if tr.stats.starttime <= o.time <= tr.stats.endtime
                ]
                if starts and o.time - max(starts) >= min_pre_onset_s - 0.5 / rate:
                    w, ref, reason = cut_window(sd, max(starts), n, rate)
        if w is None:
            prev = outcome.get(key)
            if prev is None or _REASON_RANK[reason] < _REASON_RANK[prev]:
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
        spans = station_coverage(sd, rate)
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
            w, _, reason = cut_window(sd, UTCDateTime(cands[j]), n, rate)
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
    from obspy import read

    try:
        st = read(str(path))
    except Exception as exc:
        log.warning("%s: unreadable, skipped (%s: %s)", path, type(exc).__name__, exc)
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


# ----------------------------------------------------------------------------- clusters
def kmeans_clusters(coords: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Location classes: int64[n] in 0..k'-1 for coords float[n, 3] (lat deg, lon deg, depth km).

    k-means (scipy ``kmeans2``, k-means++ start, seeded) on distinct locations converted to local
    kilometres (east, north, depth), so degrees and depth weigh alike. Classes are renumbered by
    size (largest first); k' < k only if k-means leaves a cluster empty.
    """
    from scipy.cluster.vq import kmeans2

    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.isfinite(coords).all():
        raise ValueError(
            "clusters need every event's latitude, longitude and depth; "
            f"{int((~np.isfinite(coords)).any(axis=1).sum())} of {len(coords)} event windows lack "
            "a location (give a catalog with origins: QuakeML, an origins CSV, or picks with "
            "latitude/longitude columns)"
        )
    uniq, inverse = np.unique(np.round(coords, 6), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if k > len(uniq):
        raise ValueError(
            f"clusters ({k}) exceeds the number of distinct event locations ({len(uniq)})"
        )
    lat0 = np.radians(uniq[:, 0].mean())
    xyz = np.column_stack(
        [
            (uniq[:, 1] - uniq[:, 1].mean()) * _KM_PER_DEG * np.cos(lat0),
            (uniq[:, 0] - uniq[:, 0].mean()) * _KM_PER_DEG,
            uniq[:, 2],
        ]
    )
    _, lab = kmeans2(xyz, k, minit="++", seed=np.random.default_rng(seed))
    sizes = np.bincount(lab, minlength=k)
    order = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    renumber = np.full(k, -1, dtype=np.int64)
    renumber[order] = np.arange(len(order))
    if len(order) < k:
        log.warning(
            "k-means left %d of %d clusters empty; %d classes", k - len(order), k, len(order)
        )
    return renumber[lab][inverse]


# ----------------------------------------------------------------------------- build
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
        "resampling": "obspy Trace.resample (FFT) of each contiguous piece, where needed",
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


# ----------------------------------------------------------------------------- CLI
@click.command("build")
@click.option(
    "--waveforms",
    multiple=True,
    help="Waveform file, folder or glob (quote it); repeatable. Or use --sds.",
)
@click.option("--sds", "sds_root", type=click.Path(file_okay=False), help="SDS archive root.")
@click.option(
    "--catalog",
    required=True,
    type=click.Path(dir_okay=False),
    help="QuakeML, CSV of picks (p_time/pick_time/time + station) or CSV of origins.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Templates file.")
@click.option("--window-s", default=10.0, show_default=True, help="Window length (s).")
@click.option("--pre-onset-s", default=1.5, show_default=True, help="Window start before P (s).")
@click.option(
    "--min-pre-onset-s",
    type=float,
    default=None,
    help="Start at the data's start when it has less than --pre-onset-s before P, down to this.",
)
@click.option("--components", default="ENZ", show_default=True, help="Component order.")
@click.option("--sampling-rate-hz", default=100.0, show_default=True)
@click.option("--noise-margin-s", default=2.0, show_default=True, help="Noise ends this before P.")
@click.option("--noise-after-s", default=60.0, show_default=True, help="Noise starts this after P.")
@click.option("--noise-per-record", default=2, show_default=True, help="Per file / station-day.")
@click.option("--noise-stride-s", type=float, default=None, help="Noise grid (default: window).")
@click.option("--vp-km-s", default=6.0, show_default=True, help="P velocity for travel times.")
@click.option("--max-distance-km", type=float, default=None, help="Travel-time stations within.")
@click.option(
    "--stations",
    type=click.Path(dir_okay=False),
    default=None,
    help="StationXML or CSV (id,latitude,longitude) for origin catalogs.",
)
@click.option(
    "--max-flat-s",
    type=float,
    default=0.5,
    show_default=True,
    help="Identical values for longer than this are filled data: a gap (0 keeps them).",
)
@click.option("--clusters", type=int, default=None, help="k-means location classes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def build_cmd(
    waveforms: tuple[str, ...],
    sds_root: str | None,
    catalog: str,
    out: str,
    window_s: float,
    pre_onset_s: float,
    min_pre_onset_s: float | None,
    components: str,
    sampling_rate_hz: float,
    noise_margin_s: float,
    noise_after_s: float,
    noise_per_record: int,
    noise_stride_s: float | None,
    vp_km_s: float,
    max_distance_km: float | None,
    stations: str | None,
    max_flat_s: float,
    clusters: int | None,
    seed: int,
    progress: bool,
) -> None:
    """Build a templates file from continuous waveforms (files or SDS) and a catalog."""
    if bool(waveforms) == bool(sds_root):
        raise click.UsageError("give --waveforms (repeatable) or --sds, exactly one of them")
    try:
        report = build_templates(
            list(waveforms) or None,
            sds_root,
            catalog,
            out,
            window_s=window_s,
            pre_onset_s=pre_onset_s,
            min_pre_onset_s=min_pre_onset_s,
            component_order=components,
            sampling_rate_hz=sampling_rate_hz,
            noise_margin_s=noise_margin_s,
            noise_after_s=noise_after_s,
            noise_per_record=noise_per_record,
            noise_window_stride_s=noise_stride_s,
            vp_km_s=vp_km_s,
            max_distance_km=max_distance_km,
            stations=stations,
            max_flat_s=max_flat_s or None,
            clusters=clusters,
            seed=seed,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.table())
