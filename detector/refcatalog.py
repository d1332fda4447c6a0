"""Reference catalogs: picks or origins from QuakeML or CSV, one reader for the whole project.

``quakescan score`` compares detections with these times; ``quakescan templates build`` cuts
training windows around them. Both read through ``read_reference``, so a catalog means the same
to both.

QuakeML (or any format ``obspy.read_events`` reads): per event, the first pick at each station
(rejected picks ignored; with ``phase="P"`` only P picks, a pick's phase being its
``phase_hint`` or the phase of an arrival that refers to it) gives a per-station time; an event
without such picks gives its (preferred) origin time as a network time. Every event's origin
also goes to ``origins``, with its location.

CSV: the first column present among ``TIME_COLUMNS`` gives the time; an optional ``station``
column (NET.STA, NET.STA.LOC.CHA, or STA with a ``network`` column) makes a row a pick, else it
is an origin time. Optional columns: ``phase`` / ``phase_hint``, ``event_id``, an
``origin_time`` next to a pick time, and the event's latitude, longitude and depth (km).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from obspy import UTCDateTime

log = logging.getLogger(__name__)

#: Accepted time columns of a reference CSV, in order of preference.
TIME_COLUMNS: tuple[str, ...] = ("p_time", "pick_time", "time", "origin_time")
LATITUDE_COLUMNS = ("latitude", "event_latitude", "origin_latitude", "source_latitude")
LONGITUDE_COLUMNS = ("longitude", "event_longitude", "origin_longitude", "source_longitude")
DEPTH_COLUMNS = ("depth_km", "event_depth_km", "origin_depth_km", "source_depth_km")
PHASE_COLUMNS = ("phase", "phase_hint")

Coords = tuple[float, float, float]  # event latitude (deg), longitude (deg), depth (km)


@dataclass
class ReferenceTime:
    """One reference time: a pick at a station (``station`` = NET.STA, or STA
    when the catalog names no network) or a network/origin time (``station`` None).
    ``source`` says where it came from (file line or event id) for reports; ``phase``
    is the pick's phase ('' when unknown), ``event`` the event id its picks share, and
    ``coords`` the event's location when the catalog has one."""

    time: UTCDateTime
    station: str | None = None
    source: str = ""
    phase: str = ""
    event: str = ""
    coords: Coords | None = None

    def __post_init__(self) -> None:
        self.time = UTCDateTime(self.time)


@dataclass
class ReferenceCatalog:
    """Reference times read from a file; ``skipped`` counts entries without a usable time.

    times: picks per station and origin times of events without picks, as scored.
    origins: every origin time in the file (station None), with the event's location.
    skip_reasons: ``skipped`` by reason. format: "csv" or "quakeml"; time_column: the CSV's.
    """

    times: list[ReferenceTime]
    path: str = ""
    skipped: int = 0
    origins: list[ReferenceTime] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    format: str = ""
    time_column: str = ""

    def __len__(self) -> int:
        return len(self.times)

    @property
    def kind(self) -> str:
        """ "picks" (all per station), "origins" (none per station), "mixed" or "empty"."""
        with_station = sum(t.station is not None for t in self.times)
        if not self.times:
            return "empty"
        if with_station == len(self.times):
            return "picks"
        return "origins" if with_station == 0 else "mixed"


def station_key(station: str) -> tuple[str, str]:
    """(NET, STA) of NET.STA[.LOC[.CHA]] or ("", STA) of a bare station code, upper-cased."""
    parts = station.strip().upper().split(".")
    if len(parts) == 1:
        return "", parts[0]
    return parts[0], parts[1]


def station_text(key: tuple[str, str]) -> str:
    """NET.STA, or STA when there is no network."""
    return f"{key[0]}.{key[1]}" if key[0] else key[1]


def _first(cols: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in cols), None)


def _number(value: str, where: str, column: str) -> float | None:
    if value.strip() in ("", "None", "nan", "NaN"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: column {column!r} has {value!r}; expected a number") from None


def _time(text: str, where: str, column: str) -> UTCDateTime:
    try:
        return UTCDateTime(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {column} {text!r} is not a time (expected ISO 8601 UTC, "
            "e.g. 2014-08-12T04:01:00.000Z)"
        ) from None


def _phase_ok(value: str, phase: str | None) -> bool:
    return phase is None or value.strip().upper().startswith(phase.upper())


def _read_csv(path: Path, phase: str | None) -> ReferenceCatalog:
    times: list[ReferenceTime] = []
    origins: list[ReferenceTime] = []
    skipped: Counter = Counter()
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if not header:
                raise ValueError(f"{path}: empty file; expected a CSV header row")
            header = [name.strip().lower() for name in header]
            time_col = _first(header, TIME_COLUMNS)
            if time_col is None:
                raise ValueError(
                    f"{path}, line 1: no time column among {', '.join(header)}; "
                    f"expected one of {', '.join(TIME_COLUMNS)}"
                )
            has_sta, has_net = "station" in header, "network" in header
            phase_col = _first(header, PHASE_COLUMNS)
            lat_col, lon_col = _first(header, LATITUDE_COLUMNS), _first(header, LONGITUDE_COLUMNS)
            dep_col = _first(header, DEPTH_COLUMNS)
            origin_col = "origin_time" if "origin_time" in header else None
            if origin_col == time_col:
                origin_col = None
            for values in reader:
                line = reader.line_num
                where = f"{path}, line {line}"
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                if len(values) != len(header):
                    raise ValueError(f"{where}: expected {len(header)} fields, got {len(values)}")
                row = dict(zip(header, values, strict=True))
                text = row[time_col].strip()
                if not text:
                    skipped["no_time"] += 1
                    continue
                row_phase = row[phase_col].strip() if phase_col else ""
                if phase_col and not _phase_ok(row_phase, phase):
                    skipped[f"not_{phase.lower()}_phase"] += 1
                    continue
                t = _time(text, where, time_col)
                coords = None
                if lat_col and lon_col:
                    lat = _number(row[lat_col], where, lat_col)
                    lon = _number(row[lon_col], where, lon_col)
                    dep = _number(row[dep_col], where, dep_col) if dep_col else None
                    if lat is not None and lon is not None:
                        coords = (lat, lon, dep or 0.0)
                event = row.get("event_id", "").strip() or f"{path.name}:{line}"
                station = None
                if has_sta and row["station"].strip():
                    sta = row["station"].strip()
                    if "." not in sta and has_net and row["network"].strip():
                        sta = f"{row['network'].strip()}.{sta}"
                    station = station_text(station_key(sta))
                ref = ReferenceTime(t, station, f"line {line}", row_phase, event, coords)
                times.append(ref)
                if station is None:
                    origins.append(ref)
                elif origin_col and row[origin_col].strip():
                    origins.append(
                        ReferenceTime(
                            _time(row[origin_col].strip(), where, origin_col),
                            None,
                            f"line {line}",
                            "",
                            event,
                            coords,
                        )
                    )
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV: {exc}") from None
    return ReferenceCatalog(
        times,
        str(path),
        sum(skipped.values()),
        origins,
        dict(skipped),
        format="csv",
        time_column=time_col,
    )


def _read_quakeml(path: Path, phase: str | None) -> ReferenceCatalog:
    from obspy import read_events

    try:
        catalog = read_events(str(path))
    except Exception as exc:  # ObsPy raises a variety of parser errors
        raise ValueError(
            f"{path}: not a readable event catalog (QuakeML or another ObsPy event format): "
            f"{exc}; or give a CSV of picks or origins"
        ) from None
    times: list[ReferenceTime] = []
    origins: list[ReferenceTime] = []
    skipped: Counter = Counter()
    for i, event in enumerate(catalog):
        eid = str(event.resource_id.id) if event.resource_id else f"{path.name}:{i}"
        origin = event.preferred_origin() or (event.origins[0] if event.origins else None)
        coords = None
        if origin is not None and origin.latitude is not None and origin.longitude is not None:
            depth_km = (origin.depth or 0.0) / 1000.0  # QuakeML depth is in metres
            coords = (float(origin.latitude), float(origin.longitude), depth_km)
        if origin is not None and origin.time is not None:
            origins.append(ReferenceTime(origin.time, None, eid, "", eid, coords))
        # A pick's phase is its phase_hint, or the phase of an arrival that refers to it.
        arrival_phase = {
            str(a.pick_id.id): a.phase
            for o in event.origins
            for a in o.arrivals
            if a.pick_id is not None and a.phase
        }
        first: dict[tuple[str, str], tuple[UTCDateTime, str]] = {}
        for pick in event.picks:
            wid = pick.waveform_id
            if pick.time is None or wid is None or not wid.station_code:
                skipped["no_time_or_station"] += 1
                continue
            if pick.evaluation_status == "rejected":
                skipped["rejected"] += 1
                continue
            pick_phase = str(pick.phase_hint or arrival_phase.get(str(pick.resource_id.id), ""))
            if not _phase_ok(pick_phase, phase):
                continue  # another phase of an event that may have the wanted one
            key = station_key(f"{wid.network_code or ''}.{wid.station_code}")
            if key not in first or pick.time < first[key][0]:
                first[key] = (pick.time, pick_phase)
        if first:
            for key in sorted(first):
                t, ph = first[key]
                times.append(ReferenceTime(t, station_text(key), eid, ph, eid, coords))
            continue
        if origin is None or origin.time is None:
            skipped["no_pick_no_origin"] += 1
            continue
        times.append(ReferenceTime(origin.time, None, eid, "", eid, coords))
    return ReferenceCatalog(
        times, str(path), sum(skipped.values()), origins, dict(skipped), format="quakeml"
    )


def read_reference(
    path: str | os.PathLike[str], fmt: str | None = None, *, phase: str | None = None
) -> ReferenceCatalog:
    """Read a reference catalog of picks or origins (see the module docstring).

    fmt: "quakeml" or "csv"; by default from the extension (.csv and .txt are CSV,
    anything else is tried as an ObsPy event file). phase: keep only picks whose phase
    starts with it (e.g. "P"; a CSV without a phase column keeps every row); None keeps all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference catalog {path} does not exist (or is not a file)")
    csv_suffix = path.suffix.lower() in (".csv", ".txt")
    kind = (fmt or "").strip().lower() or ("csv" if csv_suffix else "quakeml")
    if kind == "csv":
        ref = _read_csv(path, phase)
    elif kind == "quakeml":
        ref = _read_quakeml(path, phase)
    else:
        raise ValueError(f"unknown reference format {fmt!r}; expected 'quakeml' or 'csv'")
    if ref.skipped:
        log.warning("%s: skipped %d entries: %s", path, ref.skipped, ref.skip_reasons)
    return ref
