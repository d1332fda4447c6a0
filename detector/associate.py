"""Network coincidence: group station detections of one event into a NetworkEvent.

The network counterpart of ObsPy's ``coincidence_trigger`` for STA/LTA
triggers, applied to CNN detections. The rule, chosen to be deterministic and
independent of the input order:

1. Duplicate ids are removed (``catalog.dedupe``) and the detections are sorted
   by (peak_time, station, id).
2. Grouping is greedy over that order with a fixed window, not a chain: the
   first ungrouped detection opens a group, and each following detection joins
   it while its peak_time is at most ``tolerance_s`` after the group's FIRST
   member's peak_time (inclusive). The first detection beyond that opens the
   next group. So a group never spans more than ``tolerance_s``, however many
   stations chain together.
3. Stations are counted by NET.STA (location and channel prefix ignored). A
   station with several detections in one group keeps only its highest
   peak_probability one (ties: earliest peak_time, then id); the others are left
   out of the event.
4. A group with fewer than ``min_stations`` distinct stations is dropped.

An event's time is the earliest peak_time of its kept members; its label is the
majority label, ties broken by the highest member probability; its id is a hash
of the sorted member ids.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obspy import UTCDateTime
from obspy.core.event import Catalog, Event, ResourceIdentifier
from obspy.core.util import AttribDict

from quakescan.detector.catalog import (
    _NSMAP,
    _RID_PREFIX,
    QUAKESCAN_NS,
    Detection,
    _catalog_rid,
    _detection_pick,
    dedupe,
    detection_to_dict,
    format_time,
)
from quakescan.detector.fsio import atomic_write


def net_sta(station: str) -> str:
    """NET.STA of a station id (``NC.BBG.00`` -> ``NC.BBG``); the id itself if it has no dot."""
    return ".".join(station.split(".")[:2])


@dataclass
class NetworkEvent:
    """Station detections of one event, seen by at least ``min_stations`` stations.

    time: earliest member peak_time; stations: sorted NET.STA codes, one per
    member; detections: the members, sorted by (peak_time, station);
    label: majority member label; probability / mean_probability: max / mean
    member peak_probability; id: stable hash of the member ids.
    """

    id: str
    time: UTCDateTime
    stations: list[str]
    detections: list[Detection]
    label: str
    probability: float
    mean_probability: float

    @property
    def n_stations(self) -> int:
        return len(self.stations)

    @property
    def peak_time(self) -> UTCDateTime:
        """Same as ``time``: lets a NetworkEvent be scored like a Detection."""
        return self.time

    @property
    def start(self) -> UTCDateTime:
        """Earliest member start."""
        return min(d.start for d in self.detections)

    @property
    def end(self) -> UTCDateTime:
        """Latest member end."""
        return max(d.end for d in self.detections)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: times as ISO 8601 UTC strings, members as catalog dicts."""
        return {
            "id": self.id,
            "time": format_time(self.time),
            "start": format_time(self.start),
            "end": format_time(self.end),
            "n_stations": self.n_stations,
            "stations": list(self.stations),
            "label": self.label,
            "probability": self.probability,
            "mean_probability": self.mean_probability,
            "detections": [detection_to_dict(d) for d in self.detections],
        }


def network_event_id(member_ids: Iterable[str]) -> str:
    """Stable id of a network event: a hash of its sorted member detection ids."""
    key = "|".join(sorted(member_ids))
    return hashlib.sha1(f"network|{key}".encode()).hexdigest()[:20]


def by_peak_time(det: Detection) -> tuple[int, str, str]:
    """Sort key of association: by onset (peak_time), not by Detection's own order (start).

    Stations see an event's onset at nearly the same time, but their triggers can
    start windows apart; grouping follows the onsets.
    """
    return (det.peak_time.ns, det.station, det.id)


def _majority_label(members: list[Detection]) -> str:
    counts = Counter(d.label for d in members)
    best_prob: dict[str, float] = {}
    for d in members:
        best_prob[d.label] = max(best_prob.get(d.label, 0.0), d.peak_probability)
    # Most votes, then the highest probability among them, then alphabetical.
    return min(counts, key=lambda label: (-counts[label], -best_prob[label], label))


def _make_event(group: list[Detection]) -> NetworkEvent:
    best: dict[str, Detection] = {}
    for det in group:
        key = net_sta(det.station)
        kept = best.get(key)
        if kept is None or (-det.peak_probability, det.peak_time.ns, det.id) < (
            -kept.peak_probability,
            kept.peak_time.ns,
            kept.id,
        ):
            best[key] = det
    members = sorted(best.values(), key=by_peak_time)
    probs = [d.peak_probability for d in members]
    return NetworkEvent(
        id=network_event_id(d.id for d in members),
        time=members[0].peak_time,
        stations=sorted(best),
        detections=members,
        label=_majority_label(members),
        probability=max(probs),
        mean_probability=sum(probs) / len(probs),
    )


def associate(
    detections: Iterable[Detection], min_stations: int = 2, tolerance_s: float = 5.0
) -> list[NetworkEvent]:
    """Group station detections into network events (see the module docstring for the rule).

    tolerance_s: seconds a member's peak_time may lie after the group's first
    peak_time; min_stations: distinct NET.STA needed to keep an event.
    Returns events sorted by time. The result does not depend on input order.
    """
    if isinstance(min_stations, bool) or not isinstance(min_stations, int) or min_stations < 1:
        raise ValueError(f"min_stations ({min_stations!r}) must be an integer >= 1")
    if not tolerance_s >= 0:  # also rejects NaN
        raise ValueError(f"tolerance_s ({tolerance_s!r}) must be a number of seconds >= 0")
    tol_ns = round(tolerance_s * 1e9)
    ordered = sorted(dedupe(detections), key=by_peak_time)

    groups: list[list[Detection]] = []
    for det in ordered:
        if groups and det.peak_time.ns - groups[-1][0].peak_time.ns <= tol_ns:
            groups[-1].append(det)
        else:
            groups.append([det])

    events = [_make_event(g) for g in groups]
    return [ev for ev in events if ev.n_stations >= min_stations]


def write_network_quakeml(events: Iterable[NetworkEvent], path: str | os.PathLike[str]) -> Path:
    """Write network events as QuakeML 1.2 (atomically), readable by ``obspy.read_events``.

    One Event per network event (``smi:quakescan.invalid/network/<id>``) with one
    automatic Pick per member station at its peak_time; event type "earthquake"
    for label earthquake, else "not reported"; the label, probabilities and
    station count stored as ``quakescan:`` elements. No origin: association
    does not locate. ``detector.refcatalog.read_reference`` reads the picks back.
    """
    evs = list(events)
    out: list[Event] = []
    for ev in evs:
        picks = []
        for det in ev.detections:
            pick = _detection_pick(det)
            pick.extra = AttribDict(
                {
                    "detection_id": {"value": det.id, "namespace": QUAKESCAN_NS},
                    "peak_probability": {
                        "value": repr(det.peak_probability),
                        "namespace": QUAKESCAN_NS,
                    },
                }
            )
            picks.append(pick)
        event = Event(
            resource_id=ResourceIdentifier(f"{_RID_PREFIX}/network/{ev.id}"),
            event_type="earthquake" if ev.label == "earthquake" else "not reported",
            picks=picks,
        )
        fields = {
            "network_event_id": ev.id,
            "time": format_time(ev.time),
            "label": ev.label,
            "probability": repr(ev.probability),
            "mean_probability": repr(ev.mean_probability),
            "n_stations": str(ev.n_stations),
        }
        event.extra = AttribDict(
            {k: {"value": v, "namespace": QUAKESCAN_NS} for k, v in fields.items()}
        )
        out.append(event)
    catalog = Catalog(
        events=out,
        resource_id=_catalog_rid(ev.id for ev in evs),
        description="quakescan network events",
    )

    def write(tmp: str) -> None:
        catalog.write(tmp, format="QUAKEML", nsmap=_NSMAP)

    return atomic_write(path, write)
