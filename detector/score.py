"""Score detections against a reference catalog of picks or origin times.

The reference catalog is read by ``detector.refcatalog.read_reference`` (re-exported here).

Matching rule (one-to-one, greedy, deterministic):

- A reference time ``t`` and a detection are a *candidate pair* when
  ``det.start - tolerance_s <= t <= det.end + tolerance_s`` (both ends
  inclusive, compared in integer nanoseconds) and, if the reference time has a
  station, the detection is at that station. Stations compare by NET.STA,
  ignoring the location code and the channel; a reference station without a
  network (``ACR``) matches that station code in any network.
- Candidate pairs are taken in order of the smallest ``|t - det.peak_time|``
  (ties: earlier reference time, then earlier peak_time, then detection id), and
  a pair is kept when neither its reference time nor its detection is taken
  yet. Each kept pair is a true positive; leftover detections are false
  positives, leftover reference times false negatives.

Greedy-by-residual is what a seismologist would do by hand; it is not always
the maximum matching (a far pair can block two nearer ones in dense
sequences), but it is stable and the same every time.

Reference times with no station (origin times) match a detection at any
station, so several stations detecting one event give one true positive and
false positives for the rest: associate the detections into network events
first (``detector.associate``; ``quakescan score --min-stations K``) and score
those.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import click
from obspy import UTCDateTime

from quakescan.detector.catalog import format_time, read_catalog
from quakescan.detector.fsio import atomic_write
from quakescan.detector.refcatalog import (
    ReferenceCatalog,
    ReferenceTime,
    read_reference,
    station_key,
)

log = logging.getLogger(__name__)


class Scorable(Protocol):
    """What score() needs of a detection: a Detection or a NetworkEvent."""

    id: str

    @property
    def start(self) -> UTCDateTime: ...

    @property
    def end(self) -> UTCDateTime: ...

    @property
    def peak_time(self) -> UTCDateTime: ...


@dataclass
class Match:
    """A true positive: residual_s = detection peak_time - reference time (seconds)."""

    reference: ReferenceTime
    detection: Scorable
    residual_s: float


@dataclass
class ScoreResult:
    """Counts, rates and the matched pairs of one scoring run.

    precision = tp / (tp + fp), recall = tp / (tp + fn), F1 their harmonic
    mean; each is 0.0 when its denominator is 0.
    """

    tp: int
    fp: int
    fn: int
    tolerance_s: float
    matches: list[Match] = field(default_factory=list)
    false_positives: list[Scorable] = field(default_factory=list)
    false_negatives: list[ReferenceTime] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the matched pairs and the ids/times left over."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tolerance_s": self.tolerance_s,
            "matches": [
                {
                    "reference_time": format_time(m.reference.time),
                    "station": m.reference.station,
                    "detection_id": m.detection.id,
                    "residual_s": m.residual_s,
                }
                for m in self.matches
            ],
            "false_positives": [d.id for d in self.false_positives],
            "false_negatives": [
                {"reference_time": format_time(r.time), "station": r.station}
                for r in self.false_negatives
            ],
        }


# -- scoring ---------------------------------------------------------------------------


class _Index:
    """Detections sorted by start, for finding those whose padded span holds a time."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, int]] = []  # (start_ns, end_ns, detection index)
        self.starts: list[int] = []
        self.max_duration_ns = 0

    def add(self, start_ns: int, end_ns: int, index: int) -> None:
        self.items.append((start_ns, end_ns, index))
        self.max_duration_ns = max(self.max_duration_ns, end_ns - start_ns)

    def freeze(self) -> None:
        self.items.sort()
        self.starts = [item[0] for item in self.items]

    def containing(self, t_ns: int, tol_ns: int) -> Iterable[int]:
        """Indices of detections with start - tol <= t <= end + tol."""
        lo = bisect.bisect_left(self.starts, t_ns - tol_ns - self.max_duration_ns)
        hi = bisect.bisect_right(self.starts, t_ns + tol_ns)
        for start_ns, end_ns, index in self.items[lo:hi]:
            if start_ns - tol_ns <= t_ns <= end_ns + tol_ns:
                yield index


def score(
    detections: Iterable[Scorable],
    reference: ReferenceCatalog | Sequence[ReferenceTime],
    tolerance_s: float,
) -> ScoreResult:
    """Match detections to reference times one-to-one (see the module docstring).

    detections: Detection objects (per station) or NetworkEvents (no station,
    for origin-time references); tolerance_s: seconds of slack added on both
    sides of each detection's [start, end].
    """
    if not tolerance_s >= 0:  # also rejects NaN
        raise ValueError(f"tolerance_s ({tolerance_s!r}) must be a number of seconds >= 0")
    dets = list(detections)
    refs = list(reference.times if isinstance(reference, ReferenceCatalog) else reference)
    tol_ns = round(tolerance_s * 1e9)

    by_station: dict[tuple[str, str], _Index] = {}
    by_code: dict[str, _Index] = {}
    everything = _Index()
    has_network_items = False
    for j, det in enumerate(dets):
        s, e = det.start.ns, det.end.ns
        everything.add(s, e, j)
        station = getattr(det, "station", None)
        if station is None:
            has_network_items = True
            continue
        key = station_key(station)
        by_station.setdefault(key, _Index()).add(s, e, j)
        by_code.setdefault(key[1], _Index()).add(s, e, j)
    for index in (everything, *by_station.values(), *by_code.values()):
        index.freeze()

    if has_network_items and any(r.station is not None for r in refs):
        raise ValueError(
            "the reference has per-station picks but some detections have no station "
            "(network events); score station detections against picks, or network "
            "events against origin times"
        )

    pairs: list[tuple[int, int, int, str, int, int]] = []
    empty = _Index()
    for i, ref in enumerate(refs):
        t_ns = ref.time.ns
        if ref.station is None:
            index = everything
        else:
            key = station_key(ref.station)
            index = by_station.get(key, empty) if key[0] else by_code.get(key[1], empty)
        for j in index.containing(t_ns, tol_ns):
            peak_ns = dets[j].peak_time.ns
            pairs.append((abs(t_ns - peak_ns), t_ns, peak_ns, dets[j].id, i, j))
    pairs.sort()

    ref_taken: set[int] = set()
    det_taken: set[int] = set()
    matches: list[Match] = []
    for _, t_ns, peak_ns, _, i, j in pairs:
        if i in ref_taken or j in det_taken:
            continue
        ref_taken.add(i)
        det_taken.add(j)
        matches.append(Match(refs[i], dets[j], (peak_ns - t_ns) / 1e9))
    matches.sort(key=lambda m: (m.reference.time.ns, m.reference.station or ""))
    return ScoreResult(
        tp=len(matches),
        fp=len(dets) - len(matches),
        fn=len(refs) - len(matches),
        tolerance_s=float(tolerance_s),
        matches=matches,
        false_positives=[d for j, d in enumerate(dets) if j not in det_taken],
        false_negatives=[r for i, r in enumerate(refs) if i not in ref_taken],
    )


def format_table(result: ScoreResult) -> str:
    """A small plain-text table of precision, recall, F1 and tp/fp/fn."""
    rows = [
        ("precision", f"{result.precision:.3f}"),
        ("recall", f"{result.recall:.3f}"),
        ("F1", f"{result.f1:.3f}"),
        ("tp", str(result.tp)),
        ("fp", str(result.fp)),
        ("fn", str(result.fn)),
    ]
    return "\n".join(f"{name:<10} {value:>7}" for name, value in rows)


@click.command("score")
@click.option(
    "--detections",
    "detections_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detection catalog: QuakeML (.xml), CSV (.csv) or JSON lines (.jsonl).",
)
@click.option(
    "--catalog",
    "catalog_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Reference catalog: QuakeML picks/origins, or CSV with a p_time/pick_time/time/"
    "origin_time column and optional network/station columns.",
)
@click.option(
    "--tolerance",
    "tolerance_s",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="Seconds of slack on each side of a detection's [start, end].",
)
@click.option(
    "--min-stations",
    type=click.IntRange(min=1),
    default=None,
    help="Associate detections into network events seen by at least this many stations "
    "and score those (for origin-time catalogs).",
)
@click.option(
    "--association-window",
    "association_window_s",
    type=click.FloatRange(min=0.0),
    default=5.0,
    show_default=True,
    help="With --min-stations: seconds after an event's first peak time that a station "
    "detection may join it.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the full result (matches, misses) as JSON here.",
)
def score_cmd(
    detections_path: Path,
    catalog_path: Path,
    tolerance_s: float,
    min_stations: int | None,
    association_window_s: float,
    json_out: Path | None,
) -> None:
    """Score detections against a reference catalog: precision, recall, F1."""
    try:
        detections: list[Any] = list(read_catalog(detections_path))
        reference = read_reference(catalog_path)
        what = f"{len(detections)} detections"
        if min_stations is not None:
            from quakescan.detector.associate import associate

            detections = associate(detections, min_stations, association_window_s)
            what = f"{len(detections)} network events (>= {min_stations} stations)"
        result = score(detections, reference, tolerance_s)
        if json_out is not None:
            atomic_write(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"detections {detections_path}: {what}")
    skipped = f", {reference.skipped} skipped" if reference.skipped else ""
    kind = "reference times" if reference.kind == "empty" else reference.kind
    click.echo(f"reference  {catalog_path}: {len(reference)} {kind}{skipped}")
    click.echo(f"tolerance  {tolerance_s:g} s")
    click.echo(format_table(result))
