"""Detections and catalogs: the Detection record and its QuakeML / CSV / JSON-lines I/O."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obspy import UTCDateTime, read_events
from obspy.core.event import (
    Catalog,
    CreationInfo,
    Event,
    Pick,
    ResourceIdentifier,
    WaveformStreamID,
)
from obspy.core.util import AttribDict

from .fsio import atomic_write


def detection_id(
    station: str, channel_prefix: str, start: UTCDateTime, model: str, model_version: str
) -> str:
    """Stable id from station + start + model: the same detection always gets the same id.

    ``start`` is rounded to the millisecond so that float noise cannot change it.
    """
    key = f"{station}|{channel_prefix}|{UTCDateTime(start).ns // 1_000_000}|{model}|{model_version}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def _us(t: UTCDateTime) -> int:
    """``t`` in integer microseconds, rounded as UTCDateTime's own comparisons round it."""
    return round(t.ns, -3)


@functools.total_ordering
@dataclass
class Detection:
    """One detection at one station.

    station: NET.STA.LOC; channel_prefix: band + instrument code (``HH``);
    start / end: the first triggered window's start and the last triggered
    window's end; peak_time: estimated onset of the event (the peak window's
    start plus the model's onset offset); peak_probability: highest event
    probability; label: the event class with the highest probability.

    Detections are totally ordered, the one order of every catalog and listing:
    by start, then station, channel prefix and id (the remaining fields break the
    ties of equal ids, so ``a < b``, ``a == b`` or ``a > b`` always holds exactly).
    ``str(d)`` is the one line the ``detect`` and ``serve`` commands print.
    """

    station: str
    channel_prefix: str
    start: UTCDateTime
    end: UTCDateTime
    peak_time: UTCDateTime
    peak_probability: float
    label: str
    model: str
    model_version: str
    id: str = field(default="")

    def __post_init__(self) -> None:
        self.start = UTCDateTime(self.start)
        self.end = UTCDateTime(self.end)
        self.peak_time = UTCDateTime(self.peak_time)
        self.peak_probability = float(self.peak_probability)
        if not self.id:
            self.id = detection_id(
                self.station, self.channel_prefix, self.start, self.model, self.model_version
            )

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def sort_key(self) -> tuple:
        """(start, station, channel_prefix, id, then the other fields); times in microseconds."""
        return (
            _us(self.start),
            self.station,
            self.channel_prefix,
            self.id,
            _us(self.end),
            _us(self.peak_time),
            self.peak_probability,
            self.label,
            self.model,
            self.model_version,
        )

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Detection):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __str__(self) -> str:
        return (
            f"{self.peak_time}  {self.station}.{self.channel_prefix}  {self.label:<10} "
            f"p={self.peak_probability:.3f}  [{self.start} - {self.end}]  id={self.id}"
        )

    @property
    def seed_id(self) -> str:
        """NET.STA.LOC.CH? (channel prefix plus a wildcard component)."""
        return f"{self.station}.{self.channel_prefix}?"


# ---------------------------------------------------------------------------
# Catalog I/O: QuakeML (through ObsPy), CSV and JSON lines.
#
# All three formats carry the same ten fields (FIELDS) and round-trip to equal
# Detection objects. Times are ISO 8601 UTC with microseconds (the precision of
# QuakeML and of UTCDateTime equality); probabilities are written with repr()
# so that floats survive exactly.

FIELDS: tuple[str, ...] = (
    "id",
    "station",
    "channel_prefix",
    "start",
    "end",
    "peak_time",
    "peak_probability",
    "label",
    "model",
    "model_version",
)
_TIME_FIELDS = ("start", "end", "peak_time")

#: XML namespace of the quakescan fields stored as ObsPy ``extra`` attributes in QuakeML.
QUAKESCAN_NS = "https://quakescan.invalid/xmlns/1.0"
_NSMAP = {"quakescan": QUAKESCAN_NS}
_RID_PREFIX = "smi:quakescan.invalid"

FORMATS: tuple[str, ...] = ("quakeml", "csv", "jsonl")
_EXTENSIONS: dict[str, str] = {
    ".xml": "quakeml",
    ".quakeml": "quakeml",
    ".qml": "quakeml",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}

_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]00:?00)?$")


def format_time(t: UTCDateTime) -> str:
    """ISO 8601 UTC with microseconds, e.g. ``2012-08-25T05:15:29.600000Z`` (rounded to 1 us)."""
    ns = UTCDateTime(t).ns
    return UTCDateTime(ns=(ns + 500) // 1000 * 1000).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, what: str = "time") -> UTCDateTime:
    """Parse an ISO 8601 UTC date-time (``YYYY-MM-DDTHH:MM:SS[.ffffff][Z]``).

    Raises ValueError naming ``what`` and the bad text.
    """
    text = (text or "").strip()
    if not _ISO_RE.match(text):
        raise ValueError(
            f"{what} {text!r} is not an ISO 8601 UTC time like 2012-08-25T05:15:29.600000Z"
        )
    try:
        return UTCDateTime(text, iso8601=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} {text!r} is not a valid time: {exc}") from None


def detection_to_dict(det: Detection) -> dict[str, str | float]:
    """The ten catalog fields of a detection, times as ISO 8601 strings (JSON-ready)."""
    return {
        "id": det.id,
        "station": det.station,
        "channel_prefix": det.channel_prefix,
        "start": format_time(det.start),
        "end": format_time(det.end),
        "peak_time": format_time(det.peak_time),
        "peak_probability": det.peak_probability,
        "label": det.label,
        "model": det.model,
        "model_version": det.model_version,
    }


def detection_from_dict(row: Mapping[str, Any], where: str = "detection") -> Detection:
    """Build a Detection from the ten catalog fields, validating each one.

    ``where`` (e.g. ``"cat.csv, line 3"``) prefixes every error message. Raises
    ValueError for a missing field, a bad time, a probability outside [0, 1]
    or an end before the start. An empty ``id`` is recomputed.
    """
    if not isinstance(row, Mapping):
        raise ValueError(
            f"{where}: expected an object with fields {', '.join(FIELDS)}, got {type(row).__name__}"
        )
    missing = [name for name in FIELDS if name not in row or (row[name] is None and name != "id")]
    if missing:
        raise ValueError(
            f"{where}: missing field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}"
        )
    text = {name: "" if row[name] is None else row[name] for name in FIELDS}
    for name in ("id", "station", "channel_prefix", "label", "model", "model_version"):
        if not isinstance(text[name], str):
            raise ValueError(f"{where}: {name} must be a string, got {text[name]!r}")
    if not text["station"].strip():
        raise ValueError(f"{where}: station is empty; expected NET.STA.LOC")
    if not text["label"].strip():
        raise ValueError(f"{where}: label is empty; expected a class name such as 'earthquake'")
    times = {}
    for name in _TIME_FIELDS:
        if not isinstance(text[name], str):
            raise ValueError(f"{where}: {name} must be an ISO 8601 string, got {text[name]!r}")
        try:
            times[name] = parse_time(text[name], name)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    raw_p = text["peak_probability"]
    try:
        if isinstance(raw_p, bool):
            raise TypeError
        prob = float(raw_p)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: peak_probability {raw_p!r} is not a number in [0, 1]") from None
    # STA/LTA detections carry the peak STA/LTA ratio here (any value >= 0).
    upper = math.inf if text.get("model") == "stalta" else 1.0
    if not (math.isfinite(prob) and 0.0 <= prob <= upper):
        what = "a ratio >= 0" if upper == math.inf else "a number in [0, 1]"
        raise ValueError(f"{where}: peak_probability {raw_p!r} is not {what}")
    if times["end"] < times["start"]:
        raise ValueError(f"{where}: end {text['end']} is before start {text['start']}")
    return Detection(
        station=text["station"],
        channel_prefix=text["channel_prefix"],
        start=times["start"],
        end=times["end"],
        peak_time=times["peak_time"],
        peak_probability=prob,
        label=text["label"],
        model=text["model"],
        model_version=text["model_version"],
        id=text["id"].strip(),
    )


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} does not exist (or is not a file)")
    return path


# -- CSV --------------------------------------------------------------------------


def write_csv(detections: Iterable[Detection], path: str | os.PathLike[str]) -> Path:
    """Write detections as CSV: a header row of FIELDS, times ISO 8601 UTC with microseconds."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for det in detections:
        row = detection_to_dict(det)
        writer.writerow([repr(row[k]) if k == "peak_probability" else row[k] for k in FIELDS])
    return atomic_write(path, buf.getvalue())


def read_csv(path: str | os.PathLike[str]) -> list[Detection]:
    """Read a CSV written by write_csv (extra columns are ignored).

    Raises FileNotFoundError for a missing file and ValueError naming the file
    and line for a missing header column or a malformed row.
    """
    path = _existing_file(path)
    out: list[Detection] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if not header:
                raise ValueError(
                    f"{path}: empty file; expected a CSV header row {','.join(FIELDS)}"
                )
            header = [name.strip() for name in header]
            missing = [name for name in FIELDS if name not in header]
            if missing:
                raise ValueError(
                    f"{path}, line 1: header lacks column(s) {', '.join(missing)}; "
                    f"expected {','.join(FIELDS)}"
                )
            for values in reader:
                where = f"{path}, line {reader.line_num}"
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue  # blank line
                if len(values) != len(header):
                    raise ValueError(
                        f"{where}: expected {len(header)} fields ({','.join(header)}), "
                        f"got {len(values)}"
                    )
                out.append(detection_from_dict(dict(zip(header, values, strict=True)), where))
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV: {exc}") from None
    return out


# -- JSON lines -------------------------------------------------------------------


def write_jsonl(detections: Iterable[Detection], path: str | os.PathLike[str]) -> Path:
    """Write detections as JSON lines: one object with FIELDS per line."""
    lines = [json.dumps(detection_to_dict(det)) + "\n" for det in detections]
    return atomic_write(path, "".join(lines))


def read_jsonl(path: str | os.PathLike[str]) -> list[Detection]:
    """Read JSON lines written by write_jsonl (blank lines are skipped).

    Raises ValueError naming the file and line for invalid JSON or a bad field.
    """
    path = _existing_file(path)
    out: list[Detection] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON: {exc.msg}") from None
            out.append(detection_from_dict(obj, where))
    return out


# -- QuakeML ----------------------------------------------------------------------


def _waveform_id(det: Detection) -> WaveformStreamID:
    parts = det.station.split(".")
    if len(parts) == 1:
        net, sta, loc = "", parts[0], ""
    else:
        net, sta, loc = parts[0], parts[1], ".".join(parts[2:])
    channel = f"{det.channel_prefix}?" if det.channel_prefix else ""
    return WaveformStreamID(
        network_code=net, station_code=sta, location_code=loc, channel_code=channel
    )


def _detection_pick(det: Detection) -> Pick:
    """The automatic Pick of a detection at its peak_time (shared with network events)."""
    return Pick(
        resource_id=ResourceIdentifier(f"{_RID_PREFIX}/pick/{det.id}"),
        time=det.peak_time,
        waveform_id=_waveform_id(det),
        method_id=ResourceIdentifier(f"{_RID_PREFIX}/model/{det.model}/{det.model_version}"),
        evaluation_mode="automatic",
        creation_info=CreationInfo(author=det.model, version=det.model_version),
    )


def _detection_event(det: Detection) -> Event:
    pick = _detection_pick(det)
    event = Event(
        resource_id=ResourceIdentifier(f"{_RID_PREFIX}/detection/{det.id}"),
        event_type="earthquake" if det.label == "earthquake" else "not reported",
        creation_info=CreationInfo(author=det.model, version=det.model_version),
        picks=[pick],
    )
    fields = detection_to_dict(det)
    fields["peak_probability"] = repr(det.peak_probability)
    event.extra = AttribDict(
        {name: {"value": str(fields[name]), "namespace": QUAKESCAN_NS} for name in FIELDS}
    )
    return event


def _catalog_rid(ids: Iterable[str]) -> ResourceIdentifier:
    # Derived from the contents, so writing the same detections gives the same file.
    digest = hashlib.sha1("|".join(ids).encode()).hexdigest()[:20]
    return ResourceIdentifier(f"{_RID_PREFIX}/catalog/{digest}")


def write_quakeml(detections: Iterable[Detection], path: str | os.PathLike[str]) -> Path:
    """Write detections as QuakeML 1.2, readable by plain ``obspy.read_events``.

    One Event per detection (``smi:quakescan.invalid/detection/<id>``) with one
    automatic Pick at ``peak_time`` on ``NET.STA.LOC.<prefix>?``; event type
    "earthquake" for label earthquake, else "not reported"; model name and
    version in creation_info (author, version). All ten detection fields are
    stored as ``quakescan:`` elements (ObsPy ``extra``) so read_quakeml gives
    back equal detections.
    """
    dets = list(detections)
    catalog = Catalog(
        events=[_detection_event(det) for det in dets],
        resource_id=_catalog_rid(det.id for det in dets),
        description="quakescan detections",
    )

    def write(tmp: str) -> None:
        catalog.write(tmp, format="QUAKEML", nsmap=_NSMAP)

    return atomic_write(path, write)


def read_quakeml(path: str | os.PathLike[str]) -> list[Detection]:
    """Read detections from a QuakeML file written by write_quakeml.

    Raises ValueError naming the file (and event) when it is not QuakeML or an
    event lacks the quakescan fields (a foreign catalog: use
    ``detector.refcatalog.read_reference`` for those).
    """
    path = _existing_file(path)
    try:
        catalog = read_events(str(path), format="QUAKEML")
    except Exception as exc:  # ObsPy raises a variety of parser errors
        raise ValueError(f"{path}: not a readable QuakeML file: {exc}") from None
    out: list[Detection] = []
    for number, event in enumerate(catalog, start=1):
        where = f"{path}, event {number} ({event.resource_id})"
        extra = getattr(event, "extra", None) or {}
        row = {
            name: item.get("value")
            for name, item in extra.items()
            if isinstance(item, Mapping) and item.get("namespace") == QUAKESCAN_NS
        }
        if not row:
            raise ValueError(
                f"{where}: no quakescan detection fields (namespace {QUAKESCAN_NS}); "
                "expected a file written by write_quakeml"
            )
        # ObsPy reads an empty element back as None.
        row = {name: "" if value is None else value for name, value in row.items()}
        out.append(detection_from_dict(row, where))
    return out


# -- format dispatch, dedupe, sort -------------------------------------------------


def catalog_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The catalog format ("quakeml", "csv" or "jsonl"): ``fmt`` if given, else from the extension."""
    if fmt is not None:
        key = fmt.strip().lower()
        if key in FORMATS:
            return key
        raise ValueError(f"unknown catalog format {fmt!r}; expected one of {', '.join(FORMATS)}")
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise ValueError(
        f"cannot tell the catalog format of {str(path)!r} from its extension {suffix!r}; "
        f"expected one of {', '.join(_EXTENSIONS)} or fmt= one of {', '.join(FORMATS)}"
    )


_WRITERS: dict[str, Callable[[Iterable[Detection], str | os.PathLike[str]], Path]] = {
    "quakeml": write_quakeml,
    "csv": write_csv,
    "jsonl": write_jsonl,
}
_READERS: dict[str, Callable[[str | os.PathLike[str]], list[Detection]]] = {
    "quakeml": read_quakeml,
    "csv": read_csv,
    "jsonl": read_jsonl,
}


def write_catalog(
    detections: Iterable[Detection], path: str | os.PathLike[str], fmt: str | None = None
) -> Path:
    """Write detections to ``path`` atomically, as QuakeML, CSV or JSON lines (see catalog_format)."""
    return _WRITERS[catalog_format(path, fmt)](detections, path)


def read_catalog(path: str | os.PathLike[str], fmt: str | None = None) -> list[Detection]:
    """Read detections from a QuakeML, CSV or JSON-lines catalog (see catalog_format)."""
    return _READERS[catalog_format(path, fmt)](path)


def dedupe(detections: Iterable[Detection]) -> list[Detection]:
    """One detection per id, in order of each id's first appearance.

    Where several detections share an id (overlapping chunks seen twice), the one
    with the highest peak_probability wins, then the latest end, so the result
    does not depend on the input order.
    """
    best: dict[str, Detection] = {}
    for det in detections:
        kept = best.get(det.id)
        if kept is None or (det.peak_probability, det.end.ns) > (
            kept.peak_probability,
            kept.end.ns,
        ):
            best[det.id] = det
    return list(best.values())
