"""P onsets per station from a reference catalog: picks, or origin times plus travel times.

The catalog is read by ``detector.refcatalog.read_reference`` (the reader ``quakescan score``
uses), keeping P picks only. An origin without P picks becomes one onset per station of a
station file: origin time plus a straight-ray P travel time.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from obspy import UTCDateTime

from quakescan.detector.refcatalog import ReferenceCatalog, read_reference

Coords = tuple[float, float, float]  # event latitude, longitude (deg), depth (km)
StationCoords = tuple[float, float, float]  # station latitude, longitude (deg), elevation (m)


@dataclass(frozen=True)
class Onset:
    """A P onset at one station: from a pick, or an origin time plus a travel-time estimate."""

    station: str  # NET.STA
    time: UTCDateTime
    kind: str  # "pick" or "travel_time"
    event: str  # event id: the same for every station of one event
    coords: Coords | None = None  # event latitude, longitude (deg), depth (km)


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


def _number(value: str | None, path: Path, line: int, column: str) -> float | None:
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


def read_station_coordinates(path: str | Path) -> dict[str, StationCoords]:
    """Station coordinates {NET.STA: (latitude deg, longitude deg, elevation m)}.

    From a CSV with columns ``id`` (NET.STA, NET.STA.LOC or NET.STA.LOC.CHA; or ``network`` and
    ``station``), ``latitude``, ``longitude`` and optionally ``elevation`` / ``elevation_m``, or
    from StationXML (anything else ObsPy's ``read_inventory`` reads).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"station file {path} does not exist")
    out: dict[str, StationCoords] = {}
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
            elev_col = next((c for c in ("elevation_m", "elevation") if c in cols), None)
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
                lat = _number(row["latitude"], path, line, "latitude")
                lon = _number(row["longitude"], path, line, "longitude")
                if lat is None or lon is None:
                    raise ValueError(f"{path}, line {line}: station {sid} has no coordinates")
                elev = _number(row[elev_col], path, line, elev_col) if elev_col else None
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


def travel_time_s(origin: Coords, station: StationCoords, vp_km_s: float) -> tuple[float, float]:
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
    coords: Coords,
    stations: dict[str, StationCoords],
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
    stations: dict[str, StationCoords] | str | Path | None = None,
    vp_km_s: float = 6.0,
    max_distance_km: float | None = None,
) -> OnsetCatalog:
    """P onsets per station from a catalog file (read by ``detector.refcatalog``).

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
    ref = read_reference(path, phase="P")
    return onsets_from_reference(ref, stations, vp_km_s, max_distance_km)


def onsets_from_reference(
    ref: ReferenceCatalog,
    stations: dict[str, StationCoords] | None,
    vp_km_s: float = 6.0,
    max_distance_km: float | None = None,
) -> OnsetCatalog:
    """Onsets of a reference catalog: its picks (NET.STA), and travel times for its origins."""
    path = Path(ref.path)
    picks = [t for t in ref.times if t.station is not None]
    origins = [t for t in ref.times if t.station is None]
    if ref.format == "csv":
        kind = "picks csv" if picks else "origins csv"
        if picks and origins:
            raise ValueError(
                f"{path}, {origins[0].source}: no station; a picks catalog needs the station "
                "of every row (NET.STA, or separate network and station columns)"
            )
        if picks and ref.time_column == "origin_time":
            raise ValueError(
                f"{path}: picks catalog has no pick time column; expected one of "
                "p_time, pick_time, time (found only origin_time)"
            )
        if origins and not stations:
            raise ValueError(
                f"{path} is a catalog of origins (no station column): P travel times need "
                "station coordinates (stations=..., --stations FILE)"
            )
    else:
        kind = ref.format
    cat = OnsetCatalog(onsets=[], path=str(path), kind=kind)
    skipped: dict[str, int] = defaultdict(int, ref.skip_reasons)
    for p in picks:
        if "." not in p.station:
            raise ValueError(
                f"{path}, {p.source}: station {p.station!r}; expected NET.STA "
                "(or separate network and station columns)"
            )
        cat.onsets.append(Onset(p.station, p.time, "pick", p.event, p.coords))
    for o in origins:
        if o.coords is None:
            skipped["origin_without_location"] += 1
        elif not stations:
            skipped["no_pick_no_station_coordinates"] += 1
        else:
            cat.onsets.extend(
                _onsets_from_origin(o.event, o.time, o.coords, stations, vp_km_s, max_distance_km)
            )
    cat.origin_times = [o.time for o in ref.origins]
    cat.skipped = dict(skipped)
    return cat
